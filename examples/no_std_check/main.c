/* Links the no_std library and calls every exported entry point: the link fails if any
 * panic path is reachable from them. */
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>

void mlp_predict(const float *x, float *y);
int resnet_run(void *, const float *const *, const size_t *, size_t, float *const *, const size_t *, size_t);
int shapes_run(void *, const float *const *, const size_t *, size_t, float *const *, const size_t *, size_t);
int transpose_run(void *, const float *const *, const size_t *, size_t, float *const *, const size_t *, size_t);
int norms_run(void *, const float *const *, const size_t *, size_t, float *const *, const size_t *, size_t);
int merges_run(void *, const float *const *, const size_t *, size_t, float *const *, const size_t *, size_t);
int recurrent_run(void *, const float *const *, const size_t *, size_t, float *const *, const size_t *, size_t);
int bidirectional_run(void *, const float *const *, const size_t *, size_t, float *const *, const size_t *, size_t);
int transformer_run(void *, const float *const *, const size_t *, size_t, float *const *, const size_t *, size_t);
int tagger_run(void *, const float *const *, const size_t *, size_t, float *const *, const size_t *, size_t);

int main(void) {
    float x[12] = {0}, y[10];
    mlp_predict(x, y);
    float sum = 0;
    for (int i = 0; i < 10; i++) sum += y[i];
    printf("mlp softmax sums to %f\n", sum);
    /* The other entry points are linked (so their code is checked) but only the MLP is
     * run here; the conformance tests run them all. */
    void *volatile keep[] = {(void *)resnet_run, (void *)shapes_run, (void *)transpose_run, (void *)norms_run, (void *)merges_run,
                           (void *)recurrent_run, (void *)bidirectional_run,
                           (void *)transformer_run, (void *)tagger_run};
    (void)keep;
    return (sum > 0.999f && sum < 1.001f) ? 0 : 1;
}
