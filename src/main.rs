fn main() {
    let _ = qflow_steps::registry();
}
