//! The `dialtone` binary (see the `dialtone_node` library).

// mimalloc returns freed memory to the OS far better than glibc's malloc
// under this workload (many short-lived actors and transactions between
// long-lived small allocations): see docs/performance.md.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    dialtone_node::main()
}
