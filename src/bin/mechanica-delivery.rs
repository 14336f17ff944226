//! `mechanica-delivery`: the webhook delivery worker. Not built yet: it
//! lands with its own issue, so for now it says so and exits non-zero
//! rather than pretend to deliver.

fn main() -> std::process::ExitCode {
    eprintln!(
        "mechanica-delivery: not implemented yet; webhook delivery lands with the delivery-worker issue"
    );
    std::process::ExitCode::from(3)
}
