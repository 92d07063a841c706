//! `swabstream` itself, as a binary of the end-to-end suite's package (see
//! Cargo.toml): the same program the `swabstream` package ships.

fn main() -> std::process::ExitCode {
    swabstream::main()
}
