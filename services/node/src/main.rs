//! The `dialtone` binary (see the `dialtone_node` library).

fn main() -> std::process::ExitCode {
    dialtone_node::main()
}
