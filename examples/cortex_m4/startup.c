/* Start-up for a Cortex-M4 with its FPU: the vector table, then the reset handler
 * turns the FPU on, copies .data from flash, zeroes .bss and calls main. A fault ends
 * the program through semihosting instead of hanging QEMU. */
#include <stdint.h>
#include "semihost.h"

extern uint32_t __data_start, __data_end, __data_load, __bss_start, __bss_end, __stack_top;
int main(void);

void reset_handler(void);

static void fault_handler(void) {
    sh_print("fault\n");
    sh_exit(3);
}

__attribute__((section(".vectors"), used)) static const void *const vectors[16] = {
    &__stack_top,   /* initial stack pointer */
    reset_handler,  /* reset */
    fault_handler,  /* NMI */
    fault_handler,  /* hard fault */
    fault_handler,  /* memory management fault */
    fault_handler,  /* bus fault */
    fault_handler,  /* usage fault */
};

void reset_handler(void) {
    /* CPACR: full access to coprocessors 10 and 11, the FPU. */
    *(volatile uint32_t *)0xE000ED88u |= 0xFu << 20;
    __asm__ volatile("dsb\n\tisb");
    uint32_t *src = &__data_load;
    for (uint32_t *dst = &__data_start; dst < &__data_end;) *dst++ = *src++;
    for (uint32_t *dst = &__bss_start; dst < &__bss_end;) *dst++ = 0;
    sh_exit(main());
}
