//! sandbox-controller. Not built yet (issue 5).

fn main() {
    eprintln!("sandbox-controller is not implemented yet");
    std::process::exit(2);
}
