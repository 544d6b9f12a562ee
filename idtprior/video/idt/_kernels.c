/* The IDT extractor's per-pixel loops, compiled on first use and called through ctypes (kernels.py): Farneback's
 * displacement terms and 2x2 solve (flow.py) and the orientation votes of HOG / HOF / MBH (descriptors.py).
 *
 * Each loop does, pixel by pixel, the arithmetic the numpy code it replaced did array by array, in the same types and
 * the same order (float32 where that code was float32, float64 where numpy promoted), so the output is bit for bit the
 * same; the tests hold the flow to cv2.calcOpticalFlowFarneback and the votes to a direct computation. Built with
 * -ffp-contract=off: no fused multiply-add may change a rounding.
 */
#include <math.h>
#include <stddef.h>
#include <stdint.h>

/* Displacement terms M (h, w, 5) [G11, G12, G22, h1, h2] at the current flow (h, w, 2): the second frame's expansion
 * R1 (h, w, 5) [b_y, b_x, a_yy, a_xx, a_xy] sampled bilinearly at the displaced position (outside the frame: no linear
 * terms, the first frame's quadratic terms alone), averaged with the first frame's R0, weighted by edge (h, w). */
void idt_farneback_update(const float *R0, const float *R1, const float *flow, const float *edge, float *M,
                          int64_t h, int64_t w) {
    for (int64_t y = 0; y < h; y++) {
        for (int64_t x = 0; x < w; x++) {
            const int64_t p = y * w + x;
            const float *r0 = R0 + 5 * p;
            const float dx = flow[2 * p], dy = flow[2 * p + 1];
            const float fx = (float)x + dx, fy = (float)y + dy;
            const float x1 = floorf(fx), y1 = floorf(fy);
            const float ax = fx - x1, ay = fy - y1;
            float s[5];
            /* float comparisons: a NaN flow is outside, never converted to an integer */
            if (x1 >= 0.0f && x1 < (float)(w - 1) && y1 >= 0.0f && y1 < (float)(h - 1)) {
                const int64_t q = (int64_t)y1 * w + (int64_t)x1;
                const float bx = 1.0f - ax, by = 1.0f - ay;
                const float w00 = bx * by, w01 = ax * by, w10 = bx * ay, w11 = ax * ay;
                const float *a = R1 + 5 * q, *b = R1 + 5 * (q + 1), *c = R1 + 5 * (q + w), *d = R1 + 5 * (q + w + 1);
                for (int k = 0; k < 5; k++) {
                    float v = w00 * a[k];
                    v += w01 * b[k];
                    v += w10 * c[k];
                    v += w11 * d[k];
                    s[k] = v;
                }
            } else {
                s[0] = 0.0f;
                s[1] = 0.0f;
                s[2] = r0[2];
                s[3] = r0[3];
                s[4] = r0[4];
            }
            float r4 = (r0[2] + s[2]) * 0.5f;
            float r5 = (r0[3] + s[3]) * 0.5f;
            float r6 = (r0[4] + s[4]) * 0.25f;
            float r2 = (r0[0] - s[0]) * 0.5f + r4 * dy + r6 * dx;
            float r3 = (r0[1] - s[1]) * 0.5f + r6 * dy + r5 * dx;
            const float e = edge[p];
            r2 *= e;
            r3 *= e;
            r4 *= e;
            r5 *= e;
            r6 *= e;
            float *m = M + 5 * p;
            m[0] = r4 * r4 + r6 * r6;
            m[1] = (r4 + r5) * r6;
            m[2] = r5 * r5 + r6 * r6;
            m[3] = r4 * r2 + r6 * r3;
            m[4] = r6 * r2 + r5 * r3;
        }
    }
}

/* The 2x2 system of each of n pixels from its window-averaged terms A (n, 5), in float64 -> flow (n, 2) float32. */
void idt_farneback_solve(const float *A, float *flow, int64_t n) {
    for (int64_t i = 0; i < n; i++) {
        const double g11 = A[5 * i], g12 = A[5 * i + 1], g22 = A[5 * i + 2], h1 = A[5 * i + 3], h2 = A[5 * i + 4];
        const double idet = 1.0 / (g11 * g22 - g12 * g12 + 1e-3);
        flow[2 * i] = (float)((g11 * h2 - g12 * h1) * idet);
        flow[2 * i + 1] = (float)((g22 * h1 - g12 * h2) * idet);
    }
}

/* Orientation votes of n pixels (magnitude mag, angle ang in [0, 2 pi]) into channels first .. first + nbins - 1 of
 * their rows of out (n, channels): the two bins whose centres (b * 2 pi / nbins) surround the angle share the
 * magnitude linearly, the other bins hold zero. zero (n,) or NULL: pixels that vote nothing. scale = nbins / (2 pi). */
void idt_orientation_votes(const float *mag, const float *ang, const uint8_t *zero, float *out, int64_t n,
                           int64_t channels, int64_t first, int64_t nbins, float scale) {
    for (int64_t i = 0; i < n; i++) {
        float *o = out + i * channels + first;
        for (int64_t k = 0; k < nbins; k++) o[k] = 0.0f;
        if (zero && zero[i]) continue;
        const float fbin = ang[i] * scale;
        int64_t b0 = 0;
        double w1;
        if (fbin >= 0.0f && fbin < (float)nbins) {
            b0 = (int64_t)fbin; /* floor */
            w1 = (double)fbin - (double)b0;
        } else if (fbin >= (float)nbins) {
            w1 = (double)fbin - (double)nbins; /* the angle rounds up to 2 pi: bin 0 */
        } else {
            w1 = (double)fbin; /* NaN (a NaN vector): the votes are NaN, no index is computed from it */
        }
        const double m = (double)mag[i];
        const int64_t b1 = b0 + 1 < nbins ? b0 + 1 : 0;
        o[b0] = (float)(m * (1.0 - w1));
        o[b1] = (float)(m * w1);
    }
}
