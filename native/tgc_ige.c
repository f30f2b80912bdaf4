/* AES-256-IGE decryption in place, with AES-NI: the MTProto answers of tgc's media
 * connections (model/ige.py picks it, model/telethon_internals.py MediaState uses it).
 *
 * Why our own: IGE is serial (each block's input needs the previous block's output), so a
 * block costs the latency of 14 AES rounds; cryptg (Rust, the `aes` crate behind a generic
 * per-block interface) takes ~2.6x that per MB on this machine's CPU and allocates a new
 * buffer for its answer, and no maintained package decrypts IGE in place (issue 14: AES was
 * half of the client's CPU per MB downloaded). The cipher itself is the CPU's instructions;
 * this file only chains the blocks as core.telegram.org/mtproto/description says:
 * p_i = D(c_i xor p_{i-1}) xor c_{i-1}, with iv = c_0 || p_0.
 *
 * decrypt_into(buffer, key, iv): `buffer` (writable, contiguous, a multiple of 16 bytes) is
 * replaced by its plaintext; `key` and `iv` are 32 bytes each. encrypt_into, the other way,
 * is for the project's Telegram emulator (tests/fakedc), the side that encrypts 1 MB parts. Raises ValueError on other
 * lengths, RuntimeError when the CPU has no AES-NI (check `available()` first). The GIL is
 * released while a buffer of 64 KiB or more is decrypted.
 *
 * Elsewhere than x86-64 the module builds without the cipher: available() is False and
 * model/ige.py keeps cryptg. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define RELEASE_GIL_FROM (64 * 1024)

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>

#define TARGET __attribute__((target("aes,sse2")))

/* Round keys and copies of the key are the session's AES key material: not left behind. */
static void wipe(void *p, size_t n) {
    volatile uint8_t *v = p;
    for (size_t i = 0; i < n; i++) {
        v[i] = 0;
    }
}

TARGET static __m128i expand_a(__m128i key, __m128i assist) {
    assist = _mm_shuffle_epi32(assist, 0xff);
    key = _mm_xor_si128(key, _mm_slli_si128(key, 4));
    key = _mm_xor_si128(key, _mm_slli_si128(key, 4));
    key = _mm_xor_si128(key, _mm_slli_si128(key, 4));
    return _mm_xor_si128(key, assist);
}

TARGET static __m128i expand_b(__m128i key, __m128i assist) {
    assist = _mm_shuffle_epi32(assist, 0xaa);
    key = _mm_xor_si128(key, _mm_slli_si128(key, 4));
    key = _mm_xor_si128(key, _mm_slli_si128(key, 4));
    key = _mm_xor_si128(key, _mm_slli_si128(key, 4));
    return _mm_xor_si128(key, assist);
}

/* The AES-256 key schedule (FIPS-197). */
TARGET static void encryption_keys(const uint8_t *key, __m128i ek[15]) {
    ek[0] = _mm_loadu_si128((const __m128i *)key);
    ek[1] = _mm_loadu_si128((const __m128i *)(key + 16));
    ek[2] = expand_a(ek[0], _mm_aeskeygenassist_si128(ek[1], 0x01));
    ek[3] = expand_b(ek[1], _mm_aeskeygenassist_si128(ek[2], 0x00));
    ek[4] = expand_a(ek[2], _mm_aeskeygenassist_si128(ek[3], 0x02));
    ek[5] = expand_b(ek[3], _mm_aeskeygenassist_si128(ek[4], 0x00));
    ek[6] = expand_a(ek[4], _mm_aeskeygenassist_si128(ek[5], 0x04));
    ek[7] = expand_b(ek[5], _mm_aeskeygenassist_si128(ek[6], 0x00));
    ek[8] = expand_a(ek[6], _mm_aeskeygenassist_si128(ek[7], 0x08));
    ek[9] = expand_b(ek[7], _mm_aeskeygenassist_si128(ek[8], 0x00));
    ek[10] = expand_a(ek[8], _mm_aeskeygenassist_si128(ek[9], 0x10));
    ek[11] = expand_b(ek[9], _mm_aeskeygenassist_si128(ek[10], 0x00));
    ek[12] = expand_a(ek[10], _mm_aeskeygenassist_si128(ek[11], 0x20));
    ek[13] = expand_b(ek[11], _mm_aeskeygenassist_si128(ek[12], 0x00));
    ek[14] = expand_a(ek[12], _mm_aeskeygenassist_si128(ek[13], 0x40));
}

/* The equivalent inverse cipher's round keys. */
TARGET static void decryption_keys(const uint8_t *key, __m128i dk[15]) {
    __m128i ek[15];
    encryption_keys(key, ek);
    dk[0] = ek[14];
    for (int i = 1; i < 14; i++) {
        dk[i] = _mm_aesimc_si128(ek[14 - i]);
    }
    dk[14] = ek[0];
    wipe(ek, sizeof ek);
}

TARGET static void ige_decrypt(uint8_t *buf, size_t len, const uint8_t *key, const uint8_t *iv) {
    __m128i dk[15];
    decryption_keys(key, dk);
    __m128i cipher_prev = _mm_loadu_si128((const __m128i *)iv);
    __m128i plain_prev = _mm_loadu_si128((const __m128i *)(iv + 16));
    for (size_t i = 0; i < len; i += 16) {
        __m128i cipher = _mm_loadu_si128((const __m128i *)(buf + i));
        __m128i x = _mm_xor_si128(_mm_xor_si128(cipher, plain_prev), dk[0]);
        for (int r = 1; r < 14; r++) {
            x = _mm_aesdec_si128(x, dk[r]);
        }
        x = _mm_aesdeclast_si128(x, dk[14]);
        plain_prev = _mm_xor_si128(x, cipher_prev);
        cipher_prev = cipher;
        _mm_storeu_si128((__m128i *)(buf + i), plain_prev);
    }
    wipe(dk, sizeof dk);
}

/* c_i = E(p_i xor c_{i-1}) xor p_{i-1}: Telegram's servers' side, for tgc's emulator. */
TARGET static void ige_encrypt(uint8_t *buf, size_t len, const uint8_t *key, const uint8_t *iv) {
    __m128i ek[15];
    encryption_keys(key, ek);
    __m128i cipher_prev = _mm_loadu_si128((const __m128i *)iv);
    __m128i plain_prev = _mm_loadu_si128((const __m128i *)(iv + 16));
    for (size_t i = 0; i < len; i += 16) {
        __m128i plain = _mm_loadu_si128((const __m128i *)(buf + i));
        __m128i x = _mm_xor_si128(_mm_xor_si128(plain, cipher_prev), ek[0]);
        for (int r = 1; r < 14; r++) {
            x = _mm_aesenc_si128(x, ek[r]);
        }
        x = _mm_aesenclast_si128(x, ek[14]);
        cipher_prev = _mm_xor_si128(x, plain_prev);
        plain_prev = plain;
        _mm_storeu_si128((__m128i *)(buf + i), cipher_prev);
    }
    wipe(ek, sizeof ek);
}

static int cpu_has_aesni(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("aes") && __builtin_cpu_supports("sse2");
}
#else
/* No cipher here: the module loads, available() is False, and nothing calls these. */
static int cpu_has_aesni(void) { return 0; }
static void wipe(void *p, size_t n) { memset(p, 0, n); }
static void ige_decrypt(uint8_t *b, size_t n, const uint8_t *k, const uint8_t *v) {}
static void ige_encrypt(uint8_t *b, size_t n, const uint8_t *k, const uint8_t *v) {}
#endif

static int aesni;

static PyObject *available(PyObject *self, PyObject *unused) {
    return PyBool_FromLong(aesni);
}

typedef void (*ige_fn)(uint8_t *, size_t, const uint8_t *, const uint8_t *);

static PyObject *ige_into(PyObject *args, const char *format, ige_fn fn) {
    Py_buffer buf, key, iv;
    if (!PyArg_ParseTuple(args, format, &buf, &key, &iv)) {
        return NULL;
    }
    PyObject *result = NULL;
    if (!aesni) {
        PyErr_SetString(PyExc_RuntimeError, "tgc_ige: this CPU has no AES-NI");
    } else if (key.len != 32 || iv.len != 32) {
        PyErr_Format(PyExc_ValueError, "tgc_ige: key and iv must be 32 bytes (got %zd, %zd)",
                     key.len, iv.len);
    } else if (buf.len % 16 != 0) {
        PyErr_Format(PyExc_ValueError, "tgc_ige: %zd bytes is not a multiple of 16", buf.len);
    } else {
        uint8_t k[32], v[32];
        memcpy(k, key.buf, 32); /* key and iv may be views of objects another thread holds */
        memcpy(v, iv.buf, 32);
        if (buf.len >= RELEASE_GIL_FROM) {
            Py_BEGIN_ALLOW_THREADS
            fn(buf.buf, (size_t)buf.len, k, v);
            Py_END_ALLOW_THREADS
        } else {
            fn(buf.buf, (size_t)buf.len, k, v);
        }
        wipe(k, sizeof k);
        wipe(v, sizeof v);
        result = Py_NewRef(Py_None);
    }
    PyBuffer_Release(&buf);
    PyBuffer_Release(&key);
    PyBuffer_Release(&iv);
    return result;
}

static PyObject *decrypt_into(PyObject *self, PyObject *args) {
    return ige_into(args, "w*y*y*:decrypt_into", ige_decrypt);
}

static PyObject *encrypt_into(PyObject *self, PyObject *args) {
    return ige_into(args, "w*y*y*:encrypt_into", ige_encrypt);
}

static PyMethodDef methods[] = {
    {"available", available, METH_NOARGS, "Whether this CPU can run decrypt_into (AES-NI)."},
    {"decrypt_into", decrypt_into, METH_VARARGS,
     "decrypt_into(buffer, key, iv): AES-256-IGE decryption of buffer, in place."},
    {"encrypt_into", encrypt_into, METH_VARARGS,
     "encrypt_into(buffer, key, iv): AES-256-IGE encryption of buffer, in place."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "tgc_ige", "AES-256-IGE in place with AES-NI.", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit_tgc_ige(void) {
    aesni = cpu_has_aesni();
    return PyModule_Create(&module);
}
