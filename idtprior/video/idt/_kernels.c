/* The IDT extractor's per-pixel loops, compiled on first use and called through ctypes (kernels.py): Farneback's
 * displacement terms and 2x2 solve (flow.py), the orientation votes of HOG / HOF / MBH, their cell box sums and the
 * tracked points' normalised cell histograms (descriptors.py), a homography's displacement field (camera.py) and the
 * tracking step of every live trajectory of a scale (extract.py).
 *
 * Each loop does, pixel by pixel, the arithmetic the numpy code it replaced did array by array, in the same types and
 * the same order (float32 where that code was float32, float64 where numpy promoted), so the output is bit for bit the
 * same; the tests hold the flow to cv2.calcOpticalFlowFarneback and the votes to a direct computation. Built with
 * -ffp-contract=off: no fused multiply-add may change a rounding.
 */
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

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
            float s[5];
            /* float comparisons: a NaN flow is outside, never converted to an integer. floor(f) >= 0 and
             * floor(f) < n (an integer) are f >= 0 and f < n: the test needs no floor, and inside it the floor is the
             * truncation (f >= 0), which compiles to one instruction where floorf is a call without SSE4.1 */
            if (fx >= 0.0f && fx < (float)(w - 1) && fy >= 0.0f && fy < (float)(h - 1)) {
                const int64_t ix = (int64_t)fx, iy = (int64_t)fy;
                const float ax = fx - (float)ix, ay = fy - (float)iy;
                const int64_t q = iy * w + ix;
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

/* One pixel's votes (magnitude m, angle a in [0, 2 pi]) into its nbins channels o: the two bins whose centres
 * (b * 2 pi / nbins) surround the angle share the magnitude linearly, the other bins hold zero.
 * scale = nbins / (2 pi). */
static inline void vote(float *o, int64_t nbins, float m_, float a, float scale) {
    for (int64_t k = 0; k < nbins; k++) o[k] = 0.0f;
    const float fbin = a * scale;
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
    const double m = (double)m_;
    const int64_t b1 = b0 + 1 < nbins ? b0 + 1 : 0;
    o[b0] = (float)(m * (1.0 - w1));
    o[b1] = (float)(m * w1);
}

/* Orientation votes of n pixels (magnitude mag, angle ang in [0, 2 pi]) into channels first .. first + nbins - 1 of
 * their rows of out (n, channels) (vote). zero (n,) or NULL: pixels that vote nothing. scale = nbins / (2 pi). */
void idt_orientation_votes(const float *mag, const float *ang, const uint8_t *zero, float *out, int64_t n,
                           int64_t channels, int64_t first, int64_t nbins, float scale) {
    for (int64_t i = 0; i < n; i++) {
        float *o = out + i * channels + first;
        if (zero && zero[i]) {
            for (int64_t k = 0; k < nbins; k++) o[k] = 0.0f;
            continue;
        }
        vote(o, nbins, mag[i], ang[i], scale);
    }
}

/* All 33 vote channels of n pixels in one pass over out (n, 33): HOG (8 bins, channels 0-7) from (mag[0], ang[0]),
 * HOF (8 bins, 8-15) from (mag[1], ang[1]) except where zero[i], whose zero-motion bin (16) is 1 and the others 0,
 * MBHx (17-24) and MBHy (25-32) from (mag[2], ang[2]) and (mag[3], ang[3]): idt_orientation_votes of each block and
 * the zero bin, bit for bit, with each pixel's row written once. scale = 8 / (2 pi). */
void idt_frame_votes(const float *const *mag, const float *const *ang, const uint8_t *zero, float *out, int64_t n,
                     float scale) {
    for (int64_t i = 0; i < n; i++) {
        float *o = out + i * 33;
        vote(o, 8, mag[0][i], ang[0][i], scale);
        if (zero[i]) {
            for (int k = 8; k < 16; k++) o[k] = 0.0f;
            o[16] = 1.0f;
        } else {
            vote(o + 8, 8, mag[1][i], ang[1][i], scale);
            o[16] = 0.0f;
        }
        vote(o + 17, 8, mag[2][i], ang[2][i], scale);
        vote(o + 25, 8, mag[3][i], ang[3][i], scale);
    }
}

/* One row's box sums in float64: D[x] = the sum of S[x .. x + k - 1] per channel, columns past the row's end repeating
 * its last pixel; a running sum, each step adding (entering - leaving), as cv2.boxFilter's row pass. */
static void box_row(const float *S, double *D, int64_t w, int64_t c, int64_t k) {
    for (int64_t ch = 0; ch < c; ch++) {
        double s = 0.0;
        for (int64_t i = 0; i < k; i++) s += (double)S[(i < w ? i : w - 1) * c + ch];
        D[ch] = s;
    }
    for (int64_t x = 0; x + 1 < w; x++) {
        const float *a = S + (x + k < w ? x + k : w - 1) * c, *b = S + x * c;
        const double *p = D + x * c;
        double *q = D + (x + 1) * c;
        for (int64_t ch = 0; ch < c; ch++) q[ch] = p[ch] + ((double)a[ch] - (double)b[ch]);
    }
}

/* Box sums over k x k squares of src (h, w, c) float32 -> dst (h, w, c) float32: pixel (y, x) holds the sum over rows
 * y .. y + k - 1 and columns x .. x + k - 1, rows and columns past the frame repeating its last ones. The row sums
 * (box_row) run down the columns as a float64 running sum (add the entering row, output, subtract the leaving one):
 * cv2.boxFilter(src, -1, (k, k), anchor=(0, 0), normalize=False, borderType=BORDER_REPLICATE), bit for bit, without
 * its per-row buffering. Returns -1 when no work buffer is given and the k + 1 rows of float64 cannot be allocated. */
int idt_box_sums(const float *src, float *dst, int64_t h, int64_t w, int64_t c, int64_t k, double *work) {
    const int64_t n = w * c;
    /* work: (k + 1) * w * c float64 of the caller's, reused frame after frame (a fresh one each call costs page
     * faults), or NULL */
    double *ring = work ? work : malloc(sizeof(double) * (size_t)(n * (k + 1)));
    if (!ring) return -1;
    double *sum = ring + n * k; /* the running column sums */
    memset(sum, 0, sizeof(double) * (size_t)n);
    /* the row sums of source row j live in slot j % k while needed; rows past the last are the last row's */
    for (int64_t j = 0; j < k - 1; j++) {
        double *R = ring + ((j < h ? j : h - 1) % k) * n;
        if (j < h) box_row(src + j * n, R, w, c, k);
        for (int64_t i = 0; i < n; i++) sum[i] += R[i];
    }
    for (int64_t y = 0; y < h; y++) {
        const int64_t j = y + k - 1;
        double *Rp = ring + ((j < h ? j : h - 1) % k) * n;
        if (j < h) box_row(src + j * n, Rp, w, c, k);
        const double *Rm = ring + (y % k) * n;
        float *D = dst + y * n;
        for (int64_t i = 0; i < n; i++) {
            const double s0 = sum[i] + Rp[i];
            D[i] = (float)s0;
            sum[i] = s0 - Rm[i];
        }
    }
    if (!work) free(ring);
    return 0;
}

/* numpy's sum of n float32 (add.reduce of a contiguous run): pairwise, eight float32 accumulators. */
static float sum_f32(const float *a, int64_t n) {
    if (n < 8) {
        float res = 0.0f;
        for (int64_t i = 0; i < n; i++) res += a[i];
        return res;
    }
    float r[8];
    for (int j = 0; j < 8; j++) r[j] = a[j];
    int64_t i;
    for (i = 8; i < n - (n % 8); i += 8)
        for (int j = 0; j < 8; j++) r[j] += a[i + j];
    float res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
    for (; i < n; i++) res += a[i];
    return res;
}

/* np.rint(v).astype(np.intp), with numpy's INT64_MIN for a NaN or out-of-range value. */
static int64_t rint_index(float v) {
    if (!(fabsf(v) < 9.0e18f)) return INT64_MIN;
    return (int64_t)rintf(v);
}

static int64_t clamp64(int64_t v, int64_t lo, int64_t hi) { return v < lo ? lo : (v > hi ? hi : v); }

/* The normalised histograms of n tracked points (x, y) at one scale, from the box sums (h, w, channels) of cells of
 * patch / nxy pixels: the nxy x nxy cells of the patch centred on the rounded point (shifted to stay inside the frame),
 * x outer and y inner, each cell's sums clipped at zero; then per block (start channel, bins) of blocks, the block's
 * (cells x bins) histogram divided by its sum (at least 1e-10) and square-rooted. out (n, nxy * nxy * channels).
 * descriptors.frame_descriptors(descriptors.cell_histograms(...)), bit for bit. Returns -1 for a patch of over 64
 * cells or 64 channels. */
int idt_cell_descriptors(const float *sums, const float *points, float *out, int64_t n, int64_t h, int64_t w,
                         int64_t channels, int64_t patch, int64_t nxy, const int64_t *blocks, int64_t nblocks) {
    const int64_t cell = patch / nxy, cells = nxy * nxy;
    if (cells > 64 || channels > 64) return -1;
    const int64_t xmax = w - patch > 0 ? w - patch : 0, ymax = h - patch > 0 ? h - patch : 0;
    float hist[64 * 64], flat[64 * 64];
    for (int64_t p = 0; p < n; p++) {
        /* np.clip(np.rint(v).astype(np.intp) - patch // 2, 0, max): INT64_MIN - patch // 2 wraps in numpy too */
        const int64_t x0 = clamp64((int64_t)((uint64_t)rint_index(points[2 * p]) - (uint64_t)(patch / 2)), 0, xmax);
        const int64_t y0 = clamp64((int64_t)((uint64_t)rint_index(points[2 * p + 1]) - (uint64_t)(patch / 2)), 0, ymax);
        for (int64_t a = 0; a < nxy; a++) {
            const int64_t xs = x0 + a * cell < w - 1 ? x0 + a * cell : w - 1;
            for (int64_t b = 0; b < nxy; b++) {
                const int64_t ys = y0 + b * cell < h - 1 ? y0 + b * cell : h - 1;
                const float *s = sums + (ys * w + xs) * channels;
                float *o = hist + (a * nxy + b) * channels;
                for (int64_t k = 0; k < channels; k++) o[k] = (s[k] >= 0.0f || isnan(s[k])) ? s[k] : 0.0f;
            }
        }
        float *dst = out + p * cells * channels;
        for (int64_t bl = 0; bl < nblocks; bl++) {
            const int64_t start = blocks[2 * bl], bins = blocks[2 * bl + 1], m = cells * bins;
            for (int64_t c = 0; c < cells; c++)
                for (int64_t b = 0; b < bins; b++) flat[c * bins + b] = hist[c * channels + start + b];
            float total = sum_f32(flat, m);
            if (total < 1e-10f) total = 1e-10f; /* np.maximum: a NaN total stays NaN */
            for (int64_t i = 0; i < m; i++) dst[i] = sqrtf(flat[i] / total);
            dst += m;
        }
    }
    return 0;
}

/* The displacement field (h, w, 2) float32 of the homography H (3, 3) float64, row major: H(x) - x at every pixel,
 * computed in float64 as camera.homography_flow's numpy expression, in its order. */
void idt_homography_flow(const double *H, float *out, int64_t h, int64_t w) {
    for (int64_t y = 0; y < h; y++) {
        const double ys = (double)(float)y;
        for (int64_t x = 0; x < w; x++) {
            const double xs = (double)(float)x;
            const double den = H[6] * xs + H[7] * ys + H[8];
            const double u = (H[0] * xs + H[1] * ys + H[2]) / den - xs;
            const double v = (H[3] * xs + H[4] * ys + H[5]) / den - ys;
            out[2 * (y * w + x)] = (float)u;
            out[2 * (y * w + x) + 1] = (float)v;
        }
    }
}

/* One frame's tracking step for the cohorts of one scale (extract.iter_idt; trajectories started at the same frame
 * advance together). table (ncoh, 6) int64 rows: the addresses of a cohort's pos (n, L + 1, 2), comp (n, L, 2) float32,
 * desc (n, nt, D) float32 and alive (n,) bool arrays, its n and its age (steps done). fdesc (m, D): the frame's
 * descriptors of every cohort's points at position age, in table order. Each point moves by the median flow med
 * (h, w, 2) at its rounded position (clipped into the frame), its compensated step is cmed's there, its descriptors are
 * added to its temporal cell age / per_cell, and it stays alive while inside the frame. alive_count (ncoh,): the live
 * trajectories of each cohort afterwards. The numpy code it replaced did the same float32 operations. */
void idt_track_step(const float *med, const float *cmed, int64_t h, int64_t w, const float *fdesc, int64_t D,
                    const int64_t *table, int64_t ncoh, int64_t L, int64_t nt, int64_t per_cell, int64_t *alive_count) {
    const float xmax = (float)(w - 1), ymax = (float)(h - 1);
    int64_t k = 0; /* row of fdesc */
    for (int64_t j = 0; j < ncoh; j++) {
        const int64_t *row = table + 6 * j;
        float *pos = (float *)(intptr_t)row[0], *comp = (float *)(intptr_t)row[1], *desc = (float *)(intptr_t)row[2];
        uint8_t *alive = (uint8_t *)(intptr_t)row[3];
        const int64_t n = row[4], age = row[5], cell = age / per_cell;
        int64_t live = 0;
        for (int64_t i = 0; i < n; i++, k++) {
            float *p = pos + (i * (L + 1) + age) * 2;
            const float px = p[0], py = p[1];
            /* np.clip(np.rint(v).astype(np.int64), 0, size - 1); NaN and out-of-range convert to INT64_MIN: 0 */
            const int64_t xi = clamp64(rint_index(px), 0, w - 1), yi = clamp64(rint_index(py), 0, h - 1);
            const float *step = med + (yi * w + xi) * 2, *cstep = cmed + (yi * w + xi) * 2;
            const float nx = px + step[0], ny = py + step[1];
            p[2] = nx;
            p[3] = ny;
            comp[(i * L + age) * 2] = cstep[0];
            comp[(i * L + age) * 2 + 1] = cstep[1];
            float *d = desc + (i * nt + cell) * D;
            const float *f = fdesc + k * D;
            for (int64_t q = 0; q < D; q++) d[q] += f[q];
            const uint8_t inside = nx >= 0.0f && nx <= xmax && ny >= 0.0f && ny <= ymax;
            alive[i] = alive[i] & inside;
            live += alive[i];
        }
        alive_count[j] = live;
    }
}

/* The points at position age of the cohorts in table (rows as idt_track_step's), in table order, into out (m, 2):
 * every trajectory's, or with only_alive those of the live ones. Returns the number of points written. */
int64_t idt_cohort_points(const int64_t *table, int64_t ncoh, int64_t L, int only_alive, float *out) {
    int64_t m = 0;
    for (int64_t j = 0; j < ncoh; j++) {
        const int64_t *row = table + 6 * j;
        const float *pos = (const float *)(intptr_t)row[0];
        const uint8_t *alive = (const uint8_t *)(intptr_t)row[3];
        const int64_t n = row[4], age = row[5];
        for (int64_t i = 0; i < n; i++) {
            if (only_alive && !alive[i]) continue;
            out[2 * m] = pos[(i * (L + 1) + age) * 2];
            out[2 * m + 1] = pos[(i * (L + 1) + age) * 2 + 1];
            m++;
        }
    }
    return m;
}
