/* Runs a model compiled by `kerac compile --emit obj` on samples from a file and
 * writes its outputs: any model, through the macros of its header (prefix `net`).
 *
 *   harness INPUTS OUTPUTS SAMPLES [RESET_EVERY]
 *
 * INPUTS holds, for each sample, every input's floats in order (little-endian
 * float32); OUTPUTS receives every output's floats the same way. A streaming model
 * (one time step a call) starts from a reset state, and again every RESET_EVERY
 * calls when given. */
#include <stdio.h>
#include <stdlib.h>
#include "model.h"

static const unsigned long in_sizes[] = NET_INPUT_SIZES;
static const unsigned long out_sizes[] = NET_OUTPUT_SIZES;

int main(int argc, char **argv) {
    if (argc != 4 && argc != 5) {
        fprintf(stderr, "usage: %s INPUTS OUTPUTS SAMPLES [RESET_EVERY]\n", argv[0]);
        return 2;
    }
    FILE *in = fopen(argv[1], "rb");
    FILE *out = fopen(argv[2], "wb");
    long samples = atol(argv[3]);
    long reset_every = argc == 5 ? atol(argv[4]) : 0;
    if (!in || !out) {
        perror("open");
        return 2;
    }
    float *inputs[NET_NUM_INPUTS];
    float *outputs[NET_NUM_OUTPUTS];
    for (int i = 0; i < NET_NUM_INPUTS; i++) inputs[i] = malloc(in_sizes[i] * sizeof(float));
    for (int i = 0; i < NET_NUM_OUTPUTS; i++) outputs[i] = malloc(out_sizes[i] * sizeof(float));
    void *scratch = aligned_alloc(NET_SCRATCH_ALIGN,
                                  (NET_SCRATCH_BYTES + NET_SCRATCH_ALIGN - 1) / NET_SCRATCH_ALIGN * NET_SCRATCH_ALIGN);
    for (long s = 0; s < samples; s++) {
#ifdef NET_STREAMING
        if (s == 0 || (reset_every > 0 && s % reset_every == 0)) net_reset_state(scratch);
#else
        (void)reset_every;
#endif
        for (int i = 0; i < NET_NUM_INPUTS; i++) {
            if (fread(inputs[i], sizeof(float), in_sizes[i], in) != in_sizes[i]) {
                fprintf(stderr, "short input file\n");
                return 2;
            }
        }
        int rc = net_predict((const float *const *)inputs, outputs, scratch);
        if (rc != 0) {
            fprintf(stderr, "net_predict returned %d\n", rc);
            return 1;
        }
        for (int i = 0; i < NET_NUM_OUTPUTS; i++) fwrite(outputs[i], sizeof(float), out_sizes[i], out);
    }
    fclose(out);
    return 0;
}
