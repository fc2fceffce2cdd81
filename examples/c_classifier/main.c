/* Classifies a 28x28 image with the MNIST-style CNN compiled by kerac into model.o.
 *
 *   classify IMAGE [KERAS]
 *
 * IMAGE holds 784 numbers (whitespace-separated). With KERAS, a file of the 10
 * probabilities Keras gave for the same image, it also checks that the compiled model
 * agrees (within 1e-5 + 1e-4 * |p|) and exits 1 where it does not. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include "model.h"

static int read_floats(const char *path, float *out, int n) {
    FILE *f = fopen(path, "r");
    if (!f) {
        perror(path);
        return -1;
    }
    for (int i = 0; i < n; i++) {
        if (fscanf(f, "%f", &out[i]) != 1) {
            fprintf(stderr, "%s: expected %d numbers, found %d\n", path, n, i);
            fclose(f);
            return -1;
        }
    }
    fclose(f);
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s IMAGE [KERAS]\n", argv[0]);
        return 2;
    }
    static float image[MNIST_INPUT0_SIZE];
    static float probabilities[MNIST_OUTPUT0_SIZE];
    /* The scratch memory is static: nothing is allocated at run time. */
    static _Alignas(MNIST_SCRATCH_ALIGN) unsigned char scratch[MNIST_SCRATCH_BYTES];
    if (read_floats(argv[1], image, MNIST_INPUT0_SIZE) != 0) return 2;

    if (mnist_predict_named(image, probabilities, scratch) != 0) return 1;

    int best = 0;
    for (int i = 1; i < MNIST_OUTPUT0_SIZE; i++)
        if (probabilities[i] > probabilities[best]) best = i;
    printf("class %d (p = %.4f)\n", best, probabilities[best]);

    if (argc > 2) {
        float keras[MNIST_OUTPUT0_SIZE];
        if (read_floats(argv[2], keras, MNIST_OUTPUT0_SIZE) != 0) return 2;
        for (int i = 0; i < MNIST_OUTPUT0_SIZE; i++) {
            if (fabsf(probabilities[i] - keras[i]) > 1e-5f + 1e-4f * fabsf(keras[i])) {
                printf("differs from Keras at class %d: %g vs %g\n", i, probabilities[i], keras[i]);
                return 1;
            }
        }
        printf("agrees with Keras\n");
    }
    return 0;
}
