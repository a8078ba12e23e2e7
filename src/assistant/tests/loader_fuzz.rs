//! Fuzzing the loader: mutated definitions never panic.

use super::*;
use proptest::prelude::*;

/// The example assistants, as JSON values to mutate.
fn examples() -> Vec<Value> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("assistants");
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "json") {
            out.push(serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap());
        }
    }
    out
}

fn replacement() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        Just(json!("")),
        Just(json!("{{ }}")),
        Just(json!("{% for x in %}")),
        Just(json!("{{ start.userInput }}")),
        Just(json!(-1)),
        Just(json!(1e300)),
        Just(json!([])),
        Just(json!({})),
        Just(json!({"type": "start"})),
        Just(json!(true)),
        "[a-z_]{0,8}".prop_map(Value::from),
    ]
}

/// Replace (or delete) the `pick`-th node of the JSON tree.
fn mutate(v: &mut Value, pick: &mut usize, with: &Value, delete: bool) -> bool {
    if *pick == 0 {
        *v = with.clone();
        return true;
    }
    *pick -= 1;
    match v {
        Value::Object(m) => {
            let keys: Vec<String> = m.keys().cloned().collect();
            for k in keys {
                if *pick == 0 && delete {
                    m.remove(&k);
                    return true;
                }
                if let Some(child) = m.get_mut(&k) {
                    if mutate(child, pick, with, delete) {
                        return true;
                    }
                }
            }
            false
        }
        Value::Array(a) => {
            for child in a.iter_mut() {
                if mutate(child, pick, with, delete) {
                    return true;
                }
            }
            false
        }
        _ => false,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]
    /// Any mutation of a valid definition either compiles or gives errors naming the file;
    /// it never panics.
    #[test]
    fn mutated_definitions_never_panic(
        which in 0usize..5,
        picks in prop::collection::vec((0usize..400, replacement(), any::<bool>()), 1..4),
    ) {
        let ex = examples();
        let mut def = ex[which % ex.len()].clone();
        for (pick, with, delete) in picks {
            let mut p = pick;
            mutate(&mut def, &mut p, &with, delete);
        }
        if let Err(errs) = compile("fuzz.json", "fuzz", &def.to_string(), &opts()) {
            prop_assert!(!errs.is_empty());
            for e in errs {
                prop_assert_eq!(e.file.as_str(), "fuzz.json");
            }
        }
    }

    #[test]
    fn arbitrary_text_never_panics(s in ".{0,300}") {
        let _ = compile("fuzz.json", "fuzz", &s, &opts());
    }
}
