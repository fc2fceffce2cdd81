/* ARM semihosting: the debugger's (here QEMU's) file and console calls, through
 * `bkpt 0xab`. Enough for a test program to read inputs, write outputs and exit with a
 * status, with no C library. */
#ifndef SEMIHOST_H
#define SEMIHOST_H

#include <stdint.h>

/* Opens a file of the host: mode 1 reads bytes, 5 writes them. -1 on failure. */
int sh_open(const char *path, int mode);
/* Bytes read (or written); less on failure. */
uint32_t sh_read(int fd, void *buf, uint32_t len);
uint32_t sh_write(int fd, const void *buf, uint32_t len);
/* The file's length in bytes, -1 on failure. */
int32_t sh_length(int fd);
void sh_close(int fd);
/* Writes a NUL-terminated string to the host's console. */
void sh_print(const char *s);
/* Writes a decimal integer. */
void sh_print_int(long v);
/* Ends the program: status 0 is success (QEMU exits 0), anything else a failure. */
void sh_exit(int status) __attribute__((noreturn));

#endif
