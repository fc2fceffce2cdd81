/* Keyword spotting on a Cortex-M4: the KWS CNN compiled by `kerac compile --emit c`
 * classifies the recorded MFCC windows in sample.h and checks each result against the
 * probabilities Keras gave (within 1e-5 + 1e-4 * |p|). It prints through semihosting
 * and exits 0 only if all agree. Nothing is allocated: the scratch memory is static. */
#include "model.h"
#include "sample.h"
#include "semihost.h"

static float scratch[(KWS_SCRATCH_BYTES + 3) / 4];

static float magnitude(float v) {
    return v < 0 ? -v : v;
}

int main(void) {
    float probabilities[KWS_OUTPUT0_SIZE];
    int failures = 0;
    for (int s = 0; s < SAMPLES; s++) {
        const float *mfcc = sample_inputs + s * KWS_INPUT0_SIZE;
        kws_predict_named(mfcc, probabilities, scratch);
        const float *keras = keras_outputs + s * KWS_OUTPUT0_SIZE;
        int best = 0, off = 0;
        for (int i = 0; i < KWS_OUTPUT0_SIZE; i++) {
            if (probabilities[i] > probabilities[best]) best = i;
            if (magnitude(probabilities[i] - keras[i]) > 1e-5f + 1e-4f * magnitude(keras[i])) off++;
        }
        sh_print("window ");
        sh_print_int(s);
        sh_print(": keyword ");
        sh_print_int(best);
        sh_print(" (p = 0.");
        long p = (long)(probabilities[best] * 10000.0f + 0.5f);
        for (long d = 1000; d > 0; d /= 10) sh_print_int(p / d % 10);
        sh_print(off ? "), differs from Keras\n" : "), as Keras\n");
        failures += off;
    }
    return failures ? 1 : 0;
}
