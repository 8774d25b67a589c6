// outbound: WAGI's outbound HTTP (wasi_experimental_http) from C, imports
// declared by hand as a WAGI module's would be. argv: path, mode, ...
//   ?get&URL        GET URL: "status S", "content-type V", "headers N bytes", "body:" + body
//   ?many&N&URL     N GETs without closing: "1:200 2:200 3:error 13 ..."
//   ?seq&N&URL      N GETs, each closed before the next: same line
//   ?abi&URL        the error code of each kind of misuse, on one line
// A refused call prints "error CODE" (WAGI's codes: 7 DestinationNotAllowed,
// 11 RequestError, 13 TooManySessions...).
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define WXH(name) __attribute__((import_module("wasi_experimental_http"), import_name(name)))
WXH("req")
uint32_t wxh_req(const char *url, size_t url_len, const char *method, size_t method_len, const char *headers,
                 size_t headers_len, const uint8_t *body, size_t body_len, uint16_t *status, uint32_t *handle);
WXH("close") uint32_t wxh_close(uint32_t handle);
WXH("header_get")
uint32_t wxh_header_get(uint32_t handle, const char *name, size_t name_len, char *value, size_t value_len,
                        size_t *written);
WXH("headers_get_all") uint32_t wxh_headers_get_all(uint32_t handle, char *buf, size_t buf_len, size_t *written);
WXH("body_read") uint32_t wxh_body_read(uint32_t handle, uint8_t *buf, size_t buf_len, size_t *read);

static const char *hdrs = "x-from-guest:outbound.c\n";

static uint32_t get(const char *url, uint16_t *status, uint32_t *handle) {
    return wxh_req(url, strlen(url), "GET", 3, hdrs, strlen(hdrs), NULL, 0, status, handle);
}

int main(int argc, char **argv) {
    fputs("Content-Type: text/plain\n\n", stdout);
    if (argc >= 3 && strcmp(argv[1], "get") == 0) {
        uint16_t status = 0;
        uint32_t h = 0;
        uint32_t err = get(argv[2], &status, &h);
        if (err != 0) {
            printf("error %u\n", err);
            return 0;
        }
        printf("status %u\n", status);
        char value[256];
        size_t n = 0;
        err = wxh_header_get(h, "Content-Type", 12, value, sizeof value - 1, &n);
        if (err == 0) {
            value[n] = 0;
            printf("content-type %s\n", value);
        } else {
            printf("content-type error %u\n", err);
        }
        static char all[65536];
        err = wxh_headers_get_all(h, all, sizeof all, &n);
        printf("headers %s %zu bytes\n", err == 0 ? "ok" : "error", n);
        fputs("body:", stdout);
        uint8_t buf[100]; // small on purpose: many body_read calls
        size_t got = 0, total = 0;
        do {
            err = wxh_body_read(h, buf, sizeof buf, &got);
            if (err != 0) {
                printf("\nbody_read error %u\n", err);
                break;
            }
            fwrite(buf, 1, got, stdout);
            total += got;
        } while (got > 0);
        printf("\nread %zu bytes, close %u\n", total, wxh_close(h));
        return 0;
    }
    if (argc >= 4 && (strcmp(argv[1], "many") == 0 || strcmp(argv[1], "seq") == 0)) {
        int n = atoi(argv[2]);
        int keep = strcmp(argv[1], "many") == 0;
        for (int i = 1; i <= n; i++) {
            uint16_t status = 0;
            uint32_t h = 0;
            uint32_t err = get(argv[3], &status, &h);
            if (err != 0) {
                printf("%d:error %u ", i, err);
            } else {
                printf("%d:%u ", i, status);
                if (!keep) {
                    wxh_close(h);
                }
            }
        }
        putchar('\n');
        return 0;
    }
    if (argc >= 3 && strcmp(argv[1], "abi") == 0) {
        // WAGI's error codes for misuse, one per case, on one line.
        const char *url = argv[2];
        uint16_t status = 0;
        uint32_t h = 0, e;
        char small[1];
        size_t n = 0;
        printf("range %u ", wxh_req(url, 0xFFFFFF00u, "GET", 3, "", 0, NULL, 0, &status, &h));
        printf("utf8 %u ", wxh_req("http://\xff/", 9, "GET", 3, "", 0, NULL, 0, &status, &h));
        printf("url %u ", wxh_req("not a url", 9, "GET", 3, "", 0, NULL, 0, &status, &h));
        printf("method %u ", wxh_req(url, strlen(url), "GE T", 4, "", 0, NULL, 0, &status, &h));
        printf("headers %u ", wxh_req(url, strlen(url), "GET", 3, "no colon here\n", 14, NULL, 0, &status, &h));
        printf("handle %u ", wxh_header_get(999, "a", 1, small, 1, &n));
        e = get(url, &status, &h);
        printf("req %u ", e);
        printf("missing %u ", wxh_header_get(h, "x-missing", 9, small, 1, &n));
        printf("small %u ", wxh_header_get(h, "content-type", 12, small, 1, &n));
        printf("allsmall %u ", wxh_headers_get_all(h, small, 1, &n));
        uint8_t b[4];
        printf("bodyhandle %u ", wxh_body_read(999, b, 4, &n));
        printf("close %u closeunknown %u ", wxh_close(h), wxh_close(999));
        printf("closed %u\n", wxh_body_read(h, b, 4, &n));
        return 0;
    }
    puts("usage: ?get&URL | ?many&N&URL | ?seq&N&URL | ?abi&URL");
    return 0;
}
