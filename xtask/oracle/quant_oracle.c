/*
 * r1q-quant-oracle: a tiny driver around llama.cpp's own ggml-quants.c, so r1q's tests can ask
 * "what bytes does llama.cpp produce for these rows?" without a GGUF round trip.
 *
 * This file is r1q's code. It calls only ggml's public quantize/dequantize functions (the same
 * quantize_<type> functions ggml_quantize_chunk dispatches to, and dequantize_row_<type>) and
 * provides the four symbols ggml-quants.c takes from ggml.c (ggml_abort, ggml_type_name,
 * ggml_type_size, ggml_row_size). Build (see xtask/src/peer.rs), no -march, no -ffast-math, no
 * FMA contraction, asserts off, like ggml-base's Release build on x86-64:
 *
 *   gcc -O2 -DNDEBUG -ffp-contract=off -std=gnu11 -I ggml/include -I ggml/src -I ggml/src/ggml-cpu \
 *       quant_oracle.c ggml/src/ggml-quants.c -lm -o r1q-quant-oracle
 *
 * Usage: r1q-quant-oracle [REQUEST_FILE]   (stdin when absent or "-"); the result goes to stdout.
 *
 * Request (all little-endian):
 *   char[4]  magic "R1QO"
 *   u32      mode: 0 = quantize, 1 = dequantize
 *   char[16] type name as ggml_type_name spells it ("q4_0", "q4_K", "iq4_xs"), NUL-padded
 *   u64      n_per_row (elements per row; a multiple of the type's block size)
 *   u64      n_rows
 *   u32      has_imatrix (quantize only; 0 or 1)
 *   payload  quantize: n_rows*n_per_row f32, then n_per_row f32 importance weights if has_imatrix
 *            dequantize: n_rows * row_size bytes of blocks
 * Response: quantize: n_rows * row_size bytes; dequantize: n_rows*n_per_row f32.
 * Exit status 2 with a message on stderr for a malformed request.
 */
#define _GNU_SOURCE
#include "ggml-quants.h"

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef size_t (*quantize_fn)(const float *, void *, int64_t, int64_t, const float *);
typedef void (*dequant_fn)(const void *, float *, int64_t);

struct oracle_type {
    const char *name;
    enum ggml_type type;
    int64_t blck;
    size_t bytes;
    quantize_fn quantize;
    dequant_fn dequantize;
};

#define T(name, id, blck, block_t)                                                        \
    { #name, GGML_TYPE_##id, blck, sizeof(block_t), quantize_##name,                      \
      (dequant_fn)dequantize_row_##name }

static const struct oracle_type TYPES[] = {
    T(q4_0, Q4_0, QK4_0, block_q4_0),
    T(q4_1, Q4_1, QK4_1, block_q4_1),
    T(q5_0, Q5_0, QK5_0, block_q5_0),
    T(q5_1, Q5_1, QK5_1, block_q5_1),
    T(q8_0, Q8_0, QK8_0, block_q8_0),
    T(q2_K, Q2_K, QK_K, block_q2_K),
    T(q3_K, Q3_K, QK_K, block_q3_K),
    T(q4_K, Q4_K, QK_K, block_q4_K),
    T(q5_K, Q5_K, QK_K, block_q5_K),
    T(q6_K, Q6_K, QK_K, block_q6_K),
    T(iq4_nl, IQ4_NL, QK4_NL, block_iq4_nl),
    T(iq4_xs, IQ4_XS, QK_K, block_iq4_xs),
    T(mxfp4, MXFP4, QK_MXFP4, block_mxfp4),
    T(tq1_0, TQ1_0, QK_K, block_tq1_0),
    T(tq2_0, TQ2_0, QK_K, block_tq2_0),
};
#define N_TYPES (sizeof(TYPES) / sizeof(TYPES[0]))

static const struct oracle_type *find_by_id(enum ggml_type type) {
    for (size_t i = 0; i < N_TYPES; ++i) {
        if (TYPES[i].type == type) return &TYPES[i];
    }
    return NULL;
}

/* ---- the symbols ggml-quants.c needs from ggml.c ---- */

void ggml_abort(const char *file, int line, const char *fmt, ...) {
    va_list ap;
    fprintf(stderr, "r1q-quant-oracle: ggml abort at %s:%d: ", file, line);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    abort();
}

const char *ggml_type_name(enum ggml_type type) {
    const struct oracle_type *t = find_by_id(type);
    return t ? t->name : "unknown";
}

size_t ggml_type_size(enum ggml_type type) {
    const struct oracle_type *t = find_by_id(type);
    if (!t) ggml_abort(__FILE__, __LINE__, "type %d not in the oracle", (int)type);
    return t->bytes;
}

size_t ggml_row_size(enum ggml_type type, int64_t ne) {
    const struct oracle_type *t = find_by_id(type);
    if (!t) ggml_abort(__FILE__, __LINE__, "type %d not in the oracle", (int)type);
    return t->bytes * (size_t)(ne / t->blck);
}

/* ---- request handling ---- */

static void fail(const char *msg) {
    fprintf(stderr, "r1q-quant-oracle: %s\n", msg);
    exit(2);
}

static void read_exact(FILE *f, void *buf, size_t n, const char *what) {
    if (n && fread(buf, 1, n, f) != n) {
        fprintf(stderr, "r1q-quant-oracle: short read of %s (%zu bytes)\n", what, n);
        exit(2);
    }
}

static uint32_t read_u32(FILE *f, const char *what) {
    uint8_t b[4];
    read_exact(f, b, 4, what);
    return (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 | (uint32_t)b[3] << 24;
}

static uint64_t read_u64(FILE *f, const char *what) {
    uint64_t lo = read_u32(f, what);
    uint64_t hi = read_u32(f, what);
    return lo | hi << 32;
}

static void *xmalloc(size_t n) {
    void *p = malloc(n ? n : 1);
    if (!p) fail("out of memory");
    return p;
}

int main(int argc, char **argv) {
    FILE *in = stdin;
    if (argc > 2) fail("usage: r1q-quant-oracle [REQUEST_FILE]");
    if (argc == 2 && strcmp(argv[1], "-") != 0) {
        in = fopen(argv[1], "rb");
        if (!in) fail("cannot open the request file");
    }
    char magic[4];
    read_exact(in, magic, 4, "magic");
    if (memcmp(magic, "R1QO", 4) != 0) fail("bad magic (want \"R1QO\")");
    uint32_t mode = read_u32(in, "mode");
    char name[17] = {0};
    read_exact(in, name, 16, "type name");
    uint64_t n_per_row = read_u64(in, "n_per_row");
    uint64_t n_rows = read_u64(in, "n_rows");
    uint32_t has_imatrix = read_u32(in, "has_imatrix");

    const struct oracle_type *t = NULL;
    for (size_t i = 0; i < N_TYPES; ++i) {
        if (strcmp(TYPES[i].name, name) == 0) t = &TYPES[i];
    }
    if (!t) {
        fprintf(stderr, "r1q-quant-oracle: unknown type \"%s\"\n", name);
        return 2;
    }
    if (mode > 1 || has_imatrix > 1) fail("bad mode or has_imatrix");
    if (n_per_row == 0 || n_per_row % (uint64_t)t->blck != 0)
        fail("n_per_row is not a positive multiple of the block size");
    if (n_per_row > (1u << 30) || n_rows > (1u << 30) || n_per_row * n_rows > (1ull << 32))
        fail("request too large");

    const size_t n = (size_t)(n_per_row * n_rows);
    const size_t row_size = ggml_row_size(t->type, (int64_t)n_per_row);
    const size_t qbytes = row_size * (size_t)n_rows;

    if (mode == 0) {
        float *src = xmalloc(n * sizeof(float));
        read_exact(in, src, n * sizeof(float), "rows");
        float *imatrix = NULL;
        if (has_imatrix) {
            imatrix = xmalloc((size_t)n_per_row * sizeof(float));
            read_exact(in, imatrix, (size_t)n_per_row * sizeof(float), "imatrix");
        }
        uint8_t *dst = xmalloc(qbytes);
        memset(dst, 0xAA, qbytes); /* poison: a byte left unwritten shows up as a mismatch */
        size_t got = t->quantize(src, dst, (int64_t)n_rows, (int64_t)n_per_row, imatrix);
        if (got != qbytes) fail("quantizer returned an unexpected size");
        if (fwrite(dst, 1, qbytes, stdout) != qbytes) fail("short write");
    } else {
        uint8_t *blocks = xmalloc(qbytes);
        read_exact(in, blocks, qbytes, "blocks");
        float *y = xmalloc(n * sizeof(float));
        t->dequantize(blocks, y, (int64_t)n);
        if (fwrite(y, sizeof(float), n, stdout) != n) fail("short write");
    }
    if (fflush(stdout) != 0) fail("flush failed");
    return 0;
}
