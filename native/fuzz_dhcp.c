/* libFuzzer target for the DHCP engine: every input is a frame handed to dhcp_handle_frame.
 *
 * The engine holds one subnet, two leases and two ports so inputs reach the reply builder.
 * When the first byte is odd the source MAC is overwritten with a declared port's tag, so the
 * fuzzer does not have to guess it; even inputs exercise the tag check itself.
 * Build and run: scripts/sanitize.sh (clang -fsanitize=fuzzer,address,undefined).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "dhcp.h"

static dhcp_engine *engine(void)
{
    static dhcp_engine *e;
    if (e != NULL)
        return e;
    e = dhcp_engine_new();
    if (e == NULL)
        abort();
    static const uint8_t opts[] = {
        1, 4, 255, 255, 255, 0,   /* subnet mask */
        3, 4, 10, 0, 0, 1,        /* router */
        6, 8, 10, 0, 0, 2, 8, 8, 8, 8, /* DNS */
        15, 4, 't', 'e', 's', 't', /* domain */
        26, 2, 0x05, 0xaa,        /* MTU 1450 */
        28, 4, 10, 0, 0, 255,     /* broadcast */
        121, 8, 16, 192, 168, 10, 0, 0, 9, 0, /* 192.168/16 via 10.0.0.9 (truncated default) */
    };
    static const uint8_t mac_a[6] = {0xfa, 0x16, 0x3e, 0, 0, 1};
    static const uint8_t mac_b[6] = {0xfa, 0x16, 0x3e, 0, 0, 2};
    if (dhcp_subnet_set(e, 1, 0x0a000001, 3600, opts, sizeof(opts)) != 0)
        abort();
    dhcp_lease_set(e, 100, mac_a, 0x0a00000a, 1, "vm-a");
    dhcp_lease_set(e, 100, mac_b, 0x0a00000b, 1, "");
    dhcp_port_set(e, 5, 100, mac_a, 1);
    dhcp_port_set(e, 6, 100, NULL, 0);
    dhcp_port_direct(e, 6, 1, mac_b); /* replies to port 6 built for direct sending */
    dhcp_set_rate_limit(e, 0, 1);
    return e;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static uint8_t frame[4096];
    static uint8_t out[2048];
    if (size < 1 || size - 1 > sizeof(frame))
        return 0;
    size_t len = size - 1;
    memcpy(frame, data + 1, len);
    if ((data[0] & 1) && len >= 12) {
        frame[6] = DHCP_TAG_0;
        frame[7] = DHCP_TAG_1;
        frame[8] = frame[9] = frame[10] = 0;
        frame[11] = (data[0] & 2) ? 6 : 5;
    }
    /* An exact-size output buffer too, so the builder's bounds are exercised. */
    size_t cap = (data[0] & 4) ? 600 : sizeof(out);
    dhcp_handle_frame(engine(), frame, len, out, cap, (uint64_t)size * 1000, NULL);
    return 0;
}
