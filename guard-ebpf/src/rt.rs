//! What every notebook-guard kernel object needs once: a panic handler (never reached: the
//! verifier rejects code that could panic) and the licence the kernel checks for GPL helpers.

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[link_section = "license"]
#[no_mangle]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
