fn main() {
    std::process::exit(psample::run());
}
