//! Demangling of the names real binaries carry, and `--no-demangle`.

use symbolize::demangle;

#[test]
fn rust_legacy_drops_hash() {
    assert_eq!(
        demangle("_ZN4core3fmt9Formatter3pad17h0123456789abcdefE"),
        "core::fmt::Formatter::pad"
    );
}

#[test]
fn rust_v0() {
    assert_eq!(
        demangle("_RNvNtCs1234_7mycrate3foo3bar"),
        "mycrate::foo::bar"
    );
    assert_eq!(
        demangle("_RNvMNtCs1234_7mycrate3fooNtB2_6Widget4draw"),
        "<mycrate::foo::Widget>::draw"
    );
}

#[test]
fn cpp() {
    assert_eq!(
        demangle("_ZNSt6vectorIiSaIiEE9push_backERKi"),
        "std::vector<int, std::allocator<int> >::push_back(int const&)"
    );
    assert_eq!(
        demangle("_ZN9wikipedia7article6formatEv"),
        "wikipedia::article::format()"
    );
}

#[test]
fn malformed_names_come_back_unchanged() {
    for s in ["_ZN", "_R", "_ZNSt6vector", "_RNvC", "main", ""] {
        assert_eq!(demangle(s), s);
    }
}
