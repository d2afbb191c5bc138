//! The DAG of steps (petgraph): edges from `after`, `${{ steps.X }}` and typed
//! reference fields. Cycles are reported with the steps of the cycle in order.

use petgraph::algo::toposort;
use petgraph::graph::{DiGraph, NodeIndex};

use crate::diagnostic::Diagnostics;
use crate::workflow::Workflow;

/// The step graph: node `i` is `workflow.steps[i]`; an edge runs upstream → downstream.
pub struct Dag {
    pub graph: DiGraph<usize, ()>,
}

impl Dag {
    pub fn new(workflow: &Workflow) -> Dag {
        let mut graph = DiGraph::new();
        let nodes: Vec<NodeIndex> = (0..workflow.steps.len())
            .map(|i| graph.add_node(i))
            .collect();
        // By name, not `Workflow::index_of`: a scan per edge is quadratic in steps.
        let index: std::collections::HashMap<&str, usize> = workflow
            .steps
            .iter()
            .enumerate()
            .map(|(i, s)| (s.name.as_str(), i))
            .collect();
        for (i, s) in workflow.steps.iter().enumerate() {
            for up in s.upstream_names() {
                if let Some(&j) = index.get(up) {
                    graph.add_edge(nodes[j], nodes[i], ());
                }
            }
        }
        Dag { graph }
    }

    /// Step indices in an order where every step comes after its upstream steps,
    /// ties broken by file order.
    pub fn order(&self) -> Vec<usize> {
        let n = self.graph.node_count();
        let mut indegree: Vec<usize> = (0..n).map(|i| self.upstream(i).len()).collect();
        let mut ready: std::collections::BTreeSet<usize> =
            (0..n).filter(|i| indegree[*i] == 0).collect();
        let mut order = Vec::with_capacity(n);
        while let Some(i) = ready.pop_first() {
            order.push(i);
            for d in self.downstream(i) {
                indegree[d] -= 1;
                if indegree[d] == 0 {
                    ready.insert(d);
                }
            }
        }
        order
    }

    pub fn upstream(&self, i: usize) -> Vec<usize> {
        let mut v: Vec<usize> = self
            .graph
            .neighbors_directed(NodeIndex::new(i), petgraph::Direction::Incoming)
            .map(|n| n.index())
            .collect();
        v.sort();
        v.dedup();
        v
    }

    pub fn downstream(&self, i: usize) -> Vec<usize> {
        let mut v: Vec<usize> = self
            .graph
            .neighbors_directed(NodeIndex::new(i), petgraph::Direction::Outgoing)
            .map(|n| n.index())
            .collect();
        v.sort();
        v.dedup();
        v
    }

    /// Every step downstream of `i`, transitively.
    pub fn all_downstream(&self, i: usize) -> Vec<usize> {
        let mut seen = vec![false; self.graph.node_count()];
        let mut stack = vec![i];
        let mut out = Vec::new();
        while let Some(n) = stack.pop() {
            for d in self.downstream(n) {
                if !seen[d] {
                    seen[d] = true;
                    out.push(d);
                    stack.push(d);
                }
            }
        }
        out.sort();
        out
    }
}

/// Report a cycle, naming its steps in order (`a → b → c → a`).
pub fn check_cycles(workflow: &Workflow, diags: &mut Diagnostics) {
    let dag = Dag::new(workflow);
    if toposort(&dag.graph, None).is_ok() {
        return;
    }
    for scc in petgraph::algo::tarjan_scc(&dag.graph) {
        let members: Vec<usize> = scc.iter().map(|n| n.index()).collect();
        let is_cycle = members.len() > 1 || dag.upstream(members[0]).contains(&members[0]);
        if !is_cycle {
            continue;
        }
        // Walk the cycle from its first member in file order.
        let start = *members.iter().min().unwrap();
        let mut path = vec![start];
        let mut cur = start;
        loop {
            let next = dag
                .downstream(cur)
                .into_iter()
                .find(|d| members.contains(d))
                .unwrap();
            if next == start || path.contains(&next) {
                path.push(next);
                break;
            }
            path.push(next);
            cur = next;
        }
        let names: Vec<&str> = path
            .iter()
            .map(|i| workflow.steps[*i].name.as_str())
            .collect();
        let at = format!("steps.{}", names[0]);
        diags.at(
            &at,
            format!(
                "the steps form a cycle: {}; remove one of these dependencies",
                names.join(" → ")
            ),
        );
    }
}
