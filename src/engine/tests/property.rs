//! Property: random automated graphs always end cleanly.

use proptest::prelude::*;

use super::*;

/// A node of a random graph (the start node is always there, as `start`).
#[derive(Debug, Clone)]
enum PNode {
    Llm,
    Reply,
    /// Two branches, by the index of their `when` expressions.
    Cond(usize, usize),
    Func,
    /// The index of its `over` expression.
    Iter(usize),
    End,
}

fn pnode() -> impl Strategy<Value = PNode> {
    prop_oneof![
        Just(PNode::Llm),
        Just(PNode::Reply),
        (0usize..8, 0usize..8).prop_map(|(a, b)| PNode::Cond(a, b)),
        Just(PNode::Func),
        (0usize..5).prop_map(PNode::Iter),
        Just(PNode::End),
    ]
}

fn ports(n: &PNode) -> Vec<Option<&'static str>> {
    match n {
        PNode::Cond(..) => vec![Some("a"), Some("b"), Some("else")],
        PNode::Iter(_) => vec![Some("body"), Some("done")],
        PNode::End => vec![],
        _ => vec![None],
    }
}

fn when(k: usize, other: &str) -> String {
    match k {
        0 => "start.n > 2".into(),
        1 => "start.n is even".into(),
        2 => "true".into(),
        3 => "false".into(),
        4 => format!("{other}.index is defined and {other}.index < 1"),
        5 => format!("{other} is defined"),
        6 => "'x' in start.userInput".into(),
        _ => format!("{{{{ {other}.count | default(0) > 1 }}}}"),
    }
}

fn over(k: usize) -> &'static str {
    [
        "[1, 2]",
        "start.items",
        "[]",
        "range(start.n)",
        "{{ [start.n, 'x'] }}",
    ][k]
}

/// The definition, built so that it is valid: every node is reached from `start` by a free
/// port of an earlier node; extra edges (cycles included) use the ports still free.
fn build(kinds: &[PNode], parents: &[u16], extra: &[(u16, u16)]) -> Value {
    let mut kinds: Vec<PNode> = kinds.to_vec();
    let ids: Vec<String> = (0..=kinds.len())
        .map(|i| {
            if i == 0 {
                "start".into()
            } else {
                format!("n{i}")
            }
        })
        .collect();
    // (node index, port) not used yet
    let mut free: Vec<(usize, Option<&'static str>)> = vec![(0, None)];
    let mut edges: Vec<Value> = Vec::new();
    let edge = |from: usize, port: Option<&str>, to: usize| {
        let mut e = json!({"from": ids[from], "to": ids[to]});
        if let Some(p) = port {
            e["port"] = json!(p);
        }
        e
    };
    let mut count = 1;
    for i in 1..=kinds.len() {
        let candidates: Vec<usize> = (0..free.len()).filter(|&k| free[k].0 < i).collect();
        if candidates.is_empty() {
            break;
        }
        let pick = candidates[parents[i % parents.len()] as usize % candidates.len()];
        let (from, port) = free.remove(pick);
        edges.push(edge(from, port, i));
        free.extend(ports(&kinds[i - 1]).into_iter().map(|p| (i, p)));
        count = i + 1;
    }
    kinds.truncate(count - 1);
    for &(a, b) in extra {
        if free.is_empty() || count < 2 {
            break;
        }
        let (from, port) = free.remove(a as usize % free.len());
        let to = 1 + b as usize % (count - 1);
        edges.push(edge(from, port, to));
    }
    let mut nodes = vec![json!({"id": "start", "type": "start"})];
    for (k, kind) in kinds.iter().enumerate() {
        let id = &ids[k + 1];
        let other = &ids[(k * 7 + 3) % count];
        nodes.push(match kind {
            PNode::Llm => {
                json!({"id": id, "type": "llm", "prompt": "Say something about {{ start.userInput }}"})
            }
            PNode::Reply => json!({"id": id, "type": "reply", "text": "n={{ start.n }}"}),
            PNode::Cond(a, b) => json!({"id": id, "type": "condition", "branches": [
                {"port": "a", "when": when(*a, other)}, {"port": "b", "when": when(*b, other)}]}),
            PNode::Func => {
                json!({"id": id, "type": "function", "tool": "t", "args": {"v": "{{ start.n }}"}})
            }
            PNode::Iter(o) => json!({"id": id, "type": "iteration", "over": over(*o)}),
            PNode::End => {
                json!({"id": id, "type": "end", "outputs": {"n": "{{ start.n }}"}})
            }
        });
    }
    json!({
        "maxSteps": 25,
        "inputArgs": [{"name": "n", "type": "integer", "default": 0},
                      {"name": "items", "type": "array", "default": ["p", "q"]}],
        "tools": {"t": {"kind": "builtin", "function": "echo"}},
        "nodes": nodes,
        "edges": edges
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn random_automated_graphs_end_cleanly(
        kinds in prop::collection::vec(pnode(), 1..9),
        parents in prop::collection::vec(any::<u16>(), 9),
        extra in prop::collection::vec((any::<u16>(), any::<u16>()), 0..8),
        n in 0i64..5,
        message in "[a-z ]{0,12}",
    ) {
        let def = build(&kinds, &parents, &extra);
        let a = match compile("prop.json", "prop", &def.to_string(), &LoadOptions::default()) {
            Ok(a) => Arc::new(a),
            Err(e) => return Err(TestCaseError::fail(format!("{e:#?}\n{def:#}"))),
        };
        prop_assert!(a.automated);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let h = harness();
        let mut cp = Checkpoint::default();
        let args = a.check_args(Some(&json!({"n": n}))).unwrap();
        let input = Input::Message { run_id: "p".into(), content: message, args };
        let ran = rt.block_on(async {
            tokio::time::timeout(
                Duration::from_secs(20),
                h.input(&a, &mut cp, input, &[], VecSink::default()),
            )
            .await
        });
        let ran = match ran {
            Ok(Ok(r)) => r,
            Ok(Err(refused)) => return Err(TestCaseError::fail(format!("refused: {refused}"))),
            Err(_) => return Err(TestCaseError::fail(format!("the run hung\n{def:#}"))),
        };
        match &ran.end {
            RunEnd::Completed { .. } => {}
            RunEnd::Failed { code: ErrorCode::StepLimit, message } => {
                prop_assert!(message.contains("25 steps"));
            }
            other => {
                return Err(TestCaseError::fail(format!("{other:?}\n{def:#}")));
            }
        }
        prop_assert!(cp.steps <= 26);
        prop_assert_eq!(steps(ran.events()).len() as u32, cp.steps.min(25));
    }
}
