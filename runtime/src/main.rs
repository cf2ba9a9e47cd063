//! agent-runtime: the envd-compatible daemon inside each sandbox. Not built yet (issue 4).

fn main() {
    eprintln!("agent-runtime is not implemented yet");
    std::process::exit(2);
}
