//! The `dialtone` program built inside the test package, so that its
//! integration tests can start it as a real process (`CARGO_BIN_EXE_*`).

fn main() -> std::process::ExitCode {
    dialtone_node::main()
}
