/* `net_predict` for the C harness (compiler/src/emit/harness.c) on the GPU: the model
 * compiled by `kerac compile --emit cuda` runs through `net_predict_cuda` on device
 * buffers. Inputs and the scratch memory go to the device before each call and come
 * back after it, so that the harness's host scratch (a streaming model's state, reset
 * by the harness) stays the state the kernels see. Test code: the copies are not how
 * a program would call the model. */
#include <cuda_runtime.h>
#include <stdio.h>
#include <stdlib.h>

#include "model.h"

static const unsigned long in_sizes[] = NET_INPUT_SIZES;
static const unsigned long out_sizes[] = NET_OUTPUT_SIZES;
static float *device_in[NET_NUM_INPUTS];
static float *device_out[NET_NUM_OUTPUTS];
static void *device_scratch;
static int ready;

static void check(cudaError_t e, const char *what) {
    if (e != cudaSuccess) {
        fprintf(stderr, "%s: %s\n", what, cudaGetErrorString(e));
        exit(1);
    }
}

extern "C" int net_predict(const float *const *inputs, float *const *outputs, void *scratch) {
    if (!ready) {
        check((cudaError_t)net_init_cuda(), "net_init_cuda");
        for (int i = 0; i < NET_NUM_INPUTS; i++)
            check(cudaMalloc((void **)&device_in[i], in_sizes[i] * sizeof(float) + 4), "cudaMalloc");
        for (int i = 0; i < NET_NUM_OUTPUTS; i++)
            check(cudaMalloc((void **)&device_out[i], out_sizes[i] * sizeof(float) + 4), "cudaMalloc");
        check(cudaMalloc(&device_scratch, NET_SCRATCH_BYTES + 4), "cudaMalloc");
        ready = 1;
    }
    for (int i = 0; i < NET_NUM_INPUTS; i++)
        check(cudaMemcpy(device_in[i], inputs[i], in_sizes[i] * sizeof(float), cudaMemcpyHostToDevice),
              "inputs to the device");
    check(cudaMemcpy(device_scratch, scratch, NET_SCRATCH_BYTES, cudaMemcpyHostToDevice),
          "scratch to the device");
    check((cudaError_t)net_predict_cuda((const float *const *)device_in, device_out, device_scratch, 0),
          "net_predict_cuda");
    check(cudaDeviceSynchronize(), "the kernels");
    for (int i = 0; i < NET_NUM_OUTPUTS; i++)
        check(cudaMemcpy(outputs[i], device_out[i], out_sizes[i] * sizeof(float), cudaMemcpyDeviceToHost),
              "outputs from the device");
    check(cudaMemcpy(scratch, device_scratch, NET_SCRATCH_BYTES, cudaMemcpyDeviceToHost),
          "scratch from the device");
    return 0;
}
