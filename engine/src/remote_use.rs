//! Which steps a remote cache is read and written for (`remote_cache:` per step).
//!
//! Read: every step that may be cached (`cache:` not false) unless it says
//! `remote_cache: false`. Written (with `--remote-cache-upload`): a step whose own setting
//! allows it (`true`, or not written and the step consumes no secret; never `pull` or
//! `false`) and whose upstream steps are all written too. The second half matters: an
//! upload carries every tree the step retains (a qcow2 overlay names its backing image, the
//! upstream's output, inside its header), so a step downstream of a customized image with a
//! root password would publish that image, which holds the password's hash.

use crate::workflow::{RemoteUse, Workflow};

/// Per step (file order): whether a remote cache is asked for its result.
pub fn readable(workflow: &Workflow) -> Vec<bool> {
    (workflow.steps.iter())
        .map(|s| s.cache && s.remote_cache != RemoteUse::Off)
        .collect()
}

/// Per step (file order): whether its result may be uploaded.
pub fn uploadable(workflow: &Workflow, dag: &crate::dag::Dag) -> Vec<bool> {
    let mut ok = vec![false; workflow.steps.len()];
    let index: std::collections::HashMap<&str, usize> = (workflow.steps.iter().enumerate())
        .map(|(i, s)| (s.name.as_str(), i))
        .collect();
    for id in dag.order() {
        let s = &workflow.steps[id.index()];
        let own = s.cache
            && match s.remote_cache {
                RemoteUse::On => true,
                RemoteUse::Default => !s.step.consumes_secret(),
                RemoteUse::Pull | RemoteUse::Off => false,
            };
        ok[id.index()] = own
            && s.upstream_names()
                .all(|u| index.get(u).is_some_and(|&j| ok[j]));
    }
    ok
}
