//! The `swabstream` binary; the program is the library's [`swabstream::main`].

fn main() -> std::process::ExitCode {
    swabstream::main()
}
