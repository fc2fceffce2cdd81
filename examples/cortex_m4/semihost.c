/* ARM semihosting calls (see semihost.h). */
#include "semihost.h"

static uint32_t call(uint32_t op, const void *arg) {
    register uint32_t r0 __asm__("r0") = op;
    register const void *r1 __asm__("r1") = arg;
    __asm__ volatile("bkpt 0xab" : "+r"(r0) : "r"(r1) : "memory");
    return r0;
}

static uint32_t length_of(const char *s) {
    uint32_t n = 0;
    while (s[n]) n++;
    return n;
}

int sh_open(const char *path, int mode) {
    uint32_t args[3] = {(uint32_t)path, (uint32_t)mode, length_of(path)};
    return (int)call(0x01, args);
}

uint32_t sh_read(int fd, void *buf, uint32_t len) {
    uint32_t args[3] = {(uint32_t)fd, (uint32_t)buf, len};
    return len - call(0x06, args);
}

uint32_t sh_write(int fd, const void *buf, uint32_t len) {
    uint32_t args[3] = {(uint32_t)fd, (uint32_t)buf, len};
    return len - call(0x05, args);
}

int32_t sh_length(int fd) {
    uint32_t args[1] = {(uint32_t)fd};
    return (int32_t)call(0x0c, args);
}

void sh_close(int fd) {
    uint32_t args[1] = {(uint32_t)fd};
    call(0x02, args);
}

void sh_print(const char *s) {
    call(0x04, s);
}

void sh_print_int(long v) {
    char buf[24];
    int i = 23;
    unsigned long u = v < 0 ? 0ul - (unsigned long)v : (unsigned long)v;
    buf[i] = 0;
    do {
        buf[--i] = (char)('0' + u % 10);
        u /= 10;
    } while (u);
    if (v < 0) buf[--i] = '-';
    sh_print(&buf[i]);
}

void sh_exit(int status) {
    /* ADP_Stopped_ApplicationExit ends QEMU with status 0; RunTimeErrorUnknown with 1. */
    call(0x18, (const void *)(status == 0 ? 0x20026u : 0x20023u));
    for (;;) {
    }
}
