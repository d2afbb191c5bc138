//! The DAG of steps: which step must finish before which. Step `i` of a
//! workflow is node [`StepId`]`(i)`; an edge runs upstream → downstream.
//!
//! It knows steps only by [`StepId`]: `workflow.rs` builds it from `after`,
//! `${{ steps.X }}` and typed reference fields (`Workflow::dag` in `workflow.rs`)
//! and names the steps of a cycle ([`Dag::cycles`] finds them). Imports nothing
//! of the engine, so everything may import it.

use petgraph::graph::{DiGraph, NodeIndex};

/// A step of the workflow being run: its index in `workflow.steps`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StepId(pub usize);

impl StepId {
    /// The index in `workflow.steps` (and in every per-step table).
    pub fn index(self) -> usize {
        self.0
    }
}

/// The step graph, with each step's upstream and downstream steps listed once.
///
/// Both lists of every step sit in one array each, step after step (a list per
/// step of a 50,000-step workflow was two allocations a step).
pub struct Dag {
    upstream: Lists,
    downstream: Lists,
}

/// A list of steps per step, all in one array: step `i`'s list is
/// `items[starts[i]..starts[i + 1]]`.
struct Lists {
    starts: Vec<usize>,
    items: Vec<StepId>,
}

impl Lists {
    /// Of `n` steps, from `(step, item)` pairs sorted by step, then item.
    fn of(n: usize, pairs: &[(StepId, StepId)]) -> Lists {
        let mut starts = Vec::with_capacity(n + 1);
        let mut at = 0;
        for i in 0..n {
            starts.push(at);
            while at < pairs.len() && pairs[at].0.0 == i {
                at += 1;
            }
        }
        starts.push(at);
        Lists {
            starts,
            items: pairs.iter().map(|p| p.1).collect(),
        }
    }

    fn get(&self, id: StepId) -> &[StepId] {
        &self.items[self.starts[id.0]..self.starts[id.0 + 1]]
    }
}

impl Dag {
    /// A DAG of `n` steps with the edges `(upstream, downstream)`; duplicate
    /// edges count once.
    pub fn new(n: usize, edges: impl IntoIterator<Item = (StepId, StepId)>) -> Dag {
        let mut pairs: Vec<(StepId, StepId)> = edges.into_iter().collect();
        pairs.sort_unstable();
        pairs.dedup();
        let downstream = Lists::of(n, &pairs);
        for p in pairs.iter_mut() {
            *p = (p.1, p.0);
        }
        pairs.sort_unstable();
        let upstream = Lists::of(n, &pairs);
        Dag {
            upstream,
            downstream,
        }
    }

    /// How many steps.
    pub fn len(&self) -> usize {
        self.upstream.starts.len() - 1
    }

    /// Whether there are no steps.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Steps in an order where every step comes after its upstream steps,
    /// ties broken by file order.
    pub fn order(&self) -> Vec<StepId> {
        let n = self.len();
        let mut indegree: Vec<usize> = (0..n).map(|i| self.upstream(StepId(i)).len()).collect();
        let mut ready: std::collections::BTreeSet<StepId> =
            (0..n).map(StepId).filter(|i| indegree[i.0] == 0).collect();
        let mut order = Vec::with_capacity(n);
        while let Some(i) = ready.pop_first() {
            order.push(i);
            for &d in self.downstream(i) {
                indegree[d.0] -= 1;
                if indegree[d.0] == 0 {
                    ready.insert(d);
                }
            }
        }
        order
    }

    /// The steps `id` needs, in file order.
    pub fn upstream(&self, id: StepId) -> &[StepId] {
        self.upstream.get(id)
    }

    /// The steps that need `id`, in file order.
    pub fn downstream(&self, id: StepId) -> &[StepId] {
        self.downstream.get(id)
    }

    /// Every step downstream of `id`, transitively, in file order.
    pub fn all_downstream(&self, id: StepId) -> Vec<StepId> {
        let mut seen = vec![false; self.len()];
        let mut stack = vec![id];
        let mut out = Vec::new();
        while let Some(n) = stack.pop() {
            for &d in self.downstream(n) {
                if !seen[d.0] {
                    seen[d.0] = true;
                    out.push(d);
                    stack.push(d);
                }
            }
        }
        out.sort();
        out
    }

    /// Every cycle, each walked from its first step in file order and ending
    /// where it started (`a → b → c → a`). Empty for a DAG.
    pub fn cycles(&self) -> Vec<Vec<StepId>> {
        if self.order().len() == self.len() {
            return Vec::new();
        }
        // Node `i` carries `i`.
        let mut graph = DiGraph::<usize, ()>::new();
        let nodes: Vec<NodeIndex> = (0..self.len()).map(|i| graph.add_node(i)).collect();
        for (i, &node) in nodes.iter().enumerate() {
            for d in self.downstream(StepId(i)) {
                graph.add_edge(node, nodes[d.0], ());
            }
        }
        let mut cycles = Vec::new();
        for scc in petgraph::algo::tarjan_scc(&graph) {
            let members: Vec<StepId> = scc.iter().map(|n| StepId(n.index())).collect();
            let is_cycle = members.len() > 1 || self.upstream(members[0]).contains(&members[0]);
            if !is_cycle {
                continue;
            }
            let start = *members.iter().min().unwrap();
            let mut path = vec![start];
            let mut cur = start;
            loop {
                let next = *self
                    .downstream(cur)
                    .iter()
                    .find(|d| members.contains(d))
                    .unwrap();
                path.push(next);
                if next == start || path[..path.len() - 1].contains(&next) {
                    break;
                }
                cur = next;
            }
            cycles.push(path);
        }
        cycles
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn diamond() -> Dag {
        // a → b, a → c, b → d, c → d
        Dag::new(
            4,
            [(0, 1), (0, 2), (1, 3), (2, 3)].map(|(u, d)| (StepId(u), StepId(d))),
        )
    }

    #[test]
    fn a_diamond_orders_each_step_after_its_upstream_ties_by_file_order() {
        let ids: Vec<usize> = diamond().order().into_iter().map(StepId::index).collect();
        assert_eq!(ids, [0, 1, 2, 3]);
    }

    #[test]
    fn every_step_below_the_top_of_a_diamond_is_downstream_of_it() {
        let dag = diamond();
        assert_eq!(
            dag.all_downstream(StepId(0)),
            [StepId(1), StepId(2), StepId(3)]
        );
        assert_eq!(dag.upstream(StepId(3)), [StepId(1), StepId(2)]);
        assert!(dag.cycles().is_empty());
    }

    #[test]
    fn a_cycle_is_walked_from_its_first_step() {
        let dag = Dag::new(
            3,
            [(0, 1), (1, 2), (2, 0)].map(|(u, d)| (StepId(u), StepId(d))),
        );
        assert_eq!(
            dag.cycles(),
            [vec![StepId(0), StepId(1), StepId(2), StepId(0)]]
        );
    }
}
