/* Runs a model compiled by `kerac compile --emit c` on a Cortex-M4 (QEMU's
 * mps2-an386): reads every sample's inputs from the host's inputs.bin and writes the
 * outputs to outputs.bin through semihosting, as harness.c does on a host. A streaming
 * model's state is reset before the first call, and every N calls where
 * reset_every.txt holds N. Buffers are static: the board has no allocator. */
#include "model.h"
#include "semihost.h"

static const unsigned long in_sizes[] = NET_INPUT_SIZES;
static const unsigned long out_sizes[] = NET_OUTPUT_SIZES;

/* POOL_FLOATS (given when compiling): every input's and output's floats together. */
static float pool[POOL_FLOATS];
static unsigned char scratch[NET_SCRATCH_BYTES] __attribute__((aligned(NET_SCRATCH_ALIGN)));

int main(void) {
    int in = sh_open("inputs.bin", 1);
    int out = sh_open("outputs.bin", 5);
    if (in < 0 || out < 0) {
        sh_print("cannot open inputs.bin or outputs.bin\n");
        return 2;
    }
    unsigned long per_sample = 0;
    float *in_ptrs[NET_NUM_INPUTS];
    float *out_ptrs[NET_NUM_OUTPUTS];
    float *next = pool;
    for (int i = 0; i < NET_NUM_INPUTS; i++) {
        per_sample += in_sizes[i] * 4;
        in_ptrs[i] = next;
        next += in_sizes[i];
    }
    for (int i = 0; i < NET_NUM_OUTPUTS; i++) {
        out_ptrs[i] = next;
        next += out_sizes[i];
    }
    long samples = sh_length(in) / (long)per_sample;
    long reset_every = 0;
    int period = sh_open("reset_every.txt", 1);
    if (period >= 0) {
        char digits[16];
        uint32_t n = sh_read(period, digits, sizeof digits);
        for (uint32_t i = 0; i < n && digits[i] >= '0' && digits[i] <= '9'; i++)
            reset_every = reset_every * 10 + (digits[i] - '0');
        sh_close(period);
    }
    for (long s = 0; s < samples; s++) {
#ifdef NET_STREAMING
        if (s == 0 || (reset_every > 0 && s % reset_every == 0)) net_reset_state(scratch);
#else
        (void)reset_every;
#endif
        for (int i = 0; i < NET_NUM_INPUTS; i++) {
            if (sh_read(in, in_ptrs[i], in_sizes[i] * 4) != in_sizes[i] * 4) {
                sh_print("short input file\n");
                return 2;
            }
        }
        if (net_predict((const float *const *)in_ptrs, out_ptrs, scratch) != 0) return 1;
        for (int i = 0; i < NET_NUM_OUTPUTS; i++) sh_write(out, out_ptrs[i], out_sizes[i] * 4);
    }
    sh_close(out);
    sh_close(in);
    return 0;
}
