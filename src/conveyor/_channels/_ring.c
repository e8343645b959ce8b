/*
 * The process channel's hot paths in C: one call across the boundary per put, per
 * get and per run of records, instead of a ctypes call for each lock operation and
 * Python bytecode for each slot of the control block.
 *
 * Everything here mirrors _shm.py, which stays the reference and the fallback: the
 * memory layout, the record format and the commit protocol are the same, and every
 * case these functions do not handle (a full or empty channel, a closed or failed
 * one, a record that is not a plain pickle, a lock whose owner died) is handed back
 * to the Python code *with the lock held*, which goes on from there.
 *
 * Each function takes the channel's base address, its ring size and the lock's
 * after_lock(rc) (RobustMutex.after_lock: it repairs the channel when the lock's
 * last owner died, or raises). When a function hands a case back, it returns -1
 * and leaves the lock held.
 *
 * The lock is tried first; if it is busy, the GIL is let go while waiting for it, as
 * the holder may be a thread of this process that needs the GIL to finish.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <linux/futex.h>
#include <pthread.h>
#include <stdint.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

/* layout: keep in step with _shm.py (checked there at import) */
#define CTL_AT 128
#define FUTEX_AT 256
#define RING_AT 4096
#define HDR 8
#define LEN_MASK ((((uint64_t)1) << 48) - 1)

enum {
    S_HEAD = 0,
    S_TAIL = 1,
    S_MAXSIZE = 2,
    S_CLOSED = 3,
    S_FAILED = 4,
    S_PUTS = 5,
    S_GETS = 6,
    S_GET_WAITERS = 7,
    S_PUT_WAITERS = 8,
    S_OP = 9,
};

#define OP_PUT 1
#define OP_GET 2

typedef volatile int64_t slot_t;

#define PAD(n) (((n) + 7) & ~(uint64_t)7)
/* keeps the compiler from moving ring copies past the commit's stores */
#define BARRIER() __atomic_thread_fence(__ATOMIC_RELEASE)

/* Take the lock: 0, or -1 with an exception set and the lock not held. */
static int
lock(char *base, PyObject *after_lock)
{
    pthread_mutex_t *m = (pthread_mutex_t *)base;
    int rc = pthread_mutex_trylock(m);
    if (rc == EBUSY) {
        Py_BEGIN_ALLOW_THREADS
        rc = pthread_mutex_lock(m);
        Py_END_ALLOW_THREADS
    }
    if (rc == 0)
        return 0;
    PyObject *done = PyObject_CallFunction(after_lock, "i", rc);
    if (done == NULL) {
        if (rc == EOWNERDEAD) /* the repair failed: the lock is ours all the same */
            pthread_mutex_unlock(m);
        return -1;
    }
    Py_DECREF(done);
    return 0;
}

static void
unlock(char *base)
{
    pthread_mutex_unlock((pthread_mutex_t *)base);
}

static void
wake(char *base, int index, int n)
{
    volatile int32_t *word = (volatile int32_t *)(base + FUTEX_AT) + index;
    *word = (*word + 1) & 0x3FFFFFFF;
    syscall(SYS_futex, (int32_t *)word, FUTEX_WAKE, n, NULL, NULL, 0);
}

static void
commit_put(char *base, slot_t *ctl, int64_t tail, int64_t items)
{
    BARRIER();
    ctl[S_OP] = OP_PUT;
    ctl[S_TAIL] = tail;
    ctl[S_PUTS] = ctl[S_PUTS] + items;
    ctl[S_OP] = 0;
    if (ctl[S_GET_WAITERS] > 0)
        wake(base, 0, 1);
}

static void
commit_get(char *base, slot_t *ctl, int64_t head, int64_t items)
{
    BARRIER();
    ctl[S_OP] = OP_GET;
    ctl[S_HEAD] = head;
    ctl[S_GETS] = ctl[S_GETS] + items;
    ctl[S_OP] = 0;
    if (ctl[S_PUT_WAITERS] > 0)
        wake(base, 1, INT32_MAX);
    if (ctl[S_PUTS] - ctl[S_GETS] > 0 && ctl[S_GET_WAITERS] > 0)
        wake(base, 0, 1); /* pass the turn on */
}

static void
ring_write(char *ring, uint64_t size, uint64_t pos, const char *src, uint64_t n)
{
    uint64_t off = pos % size;
    if (off + n <= size) {
        memcpy(ring + off, src, n);
    }
    else {
        uint64_t first = size - off;
        memcpy(ring + off, src, first);
        memcpy(ring, src + first, n - first);
    }
}

static void
ring_read(const char *ring, uint64_t size, uint64_t pos, char *dst, uint64_t n)
{
    uint64_t off = pos % size;
    if (off + n <= size) {
        memcpy(dst, ring + off, n);
    }
    else {
        uint64_t first = size - off;
        memcpy(dst, ring + off, first);
        memcpy(dst + first, ring, n - first);
    }
}

static int
parse_base(PyObject *const *args, Py_ssize_t nargs, Py_ssize_t want, const char *name,
           char **base, uint64_t *size)
{
    if (nargs != want) {
        PyErr_Format(PyExc_TypeError, "%s() takes %zd arguments", name, want);
        return -1;
    }
    if (!PyCallable_Check(args[2])) {
        PyErr_Format(PyExc_TypeError, "%s(): after_lock must be callable", name);
        return -1;
    }
    void *p = PyLong_AsVoidPtr(args[0]);
    if (p == NULL && PyErr_Occurred())
        return -1;
    unsigned long long s = PyLong_AsUnsignedLongLong(args[1]);
    if (s == (unsigned long long)-1 && PyErr_Occurred())
        return -1;
    if (s == 0 || s % 8) {
        PyErr_SetString(PyExc_ValueError, "bad ring size");
        return -1;
    }
    *base = (char *)p;
    *size = (uint64_t)s;
    return 0;
}

/* put(base, size, after_lock, data: bytes) -> 0 (done) or -1 (see the top) */
static PyObject *
ring_put(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    char *base;
    uint64_t size;
    if (parse_base(args, nargs, 4, "put", &base, &size) < 0)
        return NULL;
    if (!PyBytes_CheckExact(args[3])) {
        PyErr_SetString(PyExc_TypeError, "put() needs bytes");
        return NULL;
    }
    const char *data = PyBytes_AS_STRING(args[3]);
    uint64_t n = (uint64_t)PyBytes_GET_SIZE(args[3]);
    uint64_t need = HDR + PAD(n);
    if (lock(base, args[2]) < 0)
        return NULL;
    slot_t *ctl = (slot_t *)(base + CTL_AT);
    if (ctl[S_FAILED] || ctl[S_CLOSED] || ctl[S_PUTS] - ctl[S_GETS] >= ctl[S_MAXSIZE] ||
        size - (uint64_t)(ctl[S_TAIL] - ctl[S_HEAD]) < need)
        return PyLong_FromLong(-1);
    char *ring = base + RING_AT;
    int64_t tail = ctl[S_TAIL];
    *(uint64_t *)(ring + (uint64_t)tail % size) = n; /* a header never wraps */
    ring_write(ring, size, (uint64_t)tail + HDR, data, n);
    commit_put(base, ctl, tail + (int64_t)need, 1);
    unlock(base);
    return PyLong_FromLong(0);
}

/* put_run(base, size, after_lock, blob, ends: list[int], start: int, index: int)
 *   Put as many of the records framed back to back in blob as fit, from record
 *   `index` (at byte `start`) on: -> the number put (>= 1), or -1 when none fit
 *   (see the top). */
static PyObject *
ring_put_run(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    char *base;
    uint64_t size;
    if (parse_base(args, nargs, 7, "put_run", &base, &size) < 0)
        return NULL;
    Py_buffer view;
    if (PyObject_GetBuffer(args[3], &view, PyBUF_SIMPLE) < 0)
        return NULL;
    PyObject *ends = args[4];
    if (!PyList_CheckExact(ends)) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_TypeError, "put_run() needs a list of ends");
        return NULL;
    }
    Py_ssize_t start = PyLong_AsSsize_t(args[5]);
    Py_ssize_t index = PyLong_AsSsize_t(args[6]);
    Py_ssize_t total = PyList_GET_SIZE(ends);
    if (PyErr_Occurred() || index < 0 || index >= total || start < 0) {
        PyBuffer_Release(&view);
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_ValueError, "put_run(): bad index");
        return NULL;
    }
    if (lock(base, args[2]) < 0) {
        PyBuffer_Release(&view);
        return NULL;
    }
    slot_t *ctl = (slot_t *)(base + CTL_AT);
    int64_t tail = ctl[S_TAIL];
    uint64_t free_bytes = size - (uint64_t)(tail - ctl[S_HEAD]);
    int64_t count_room = ctl[S_MAXSIZE] - (ctl[S_PUTS] - ctl[S_GETS]);
    Py_ssize_t j = index;
    Py_ssize_t end = start;
    if (!ctl[S_FAILED] && !ctl[S_CLOSED]) {
        while (j < total && j - index < count_room) {
            Py_ssize_t e = PyLong_AsSsize_t(PyList_GET_ITEM(ends, j));
            if (e < 0 || e > view.len) {
                unlock(base);
                PyBuffer_Release(&view);
                if (!PyErr_Occurred())
                    PyErr_SetString(PyExc_ValueError, "put_run(): bad end");
                return NULL;
            }
            if ((uint64_t)(e - start) > free_bytes)
                break;
            end = e;
            j++;
        }
    }
    if (j == index) {
        PyBuffer_Release(&view);
        return PyLong_FromLong(-1);
    }
    ring_write(base + RING_AT, size, (uint64_t)tail, (const char *)view.buf + start,
               (uint64_t)(end - start));
    commit_put(base, ctl, tail + (end - start), j - index);
    unlock(base);
    PyBuffer_Release(&view);
    return PyLong_FromSsize_t(j - index);
}

/* get(base, size, after_lock) -> bytes (a plain pickle), or -1 (see the top) */
static PyObject *
ring_get(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    char *base;
    uint64_t size;
    if (parse_base(args, nargs, 3, "get", &base, &size) < 0)
        return NULL;
    if (lock(base, args[2]) < 0)
        return NULL;
    slot_t *ctl = (slot_t *)(base + CTL_AT);
    char *ring = base + RING_AT;
    if (ctl[S_FAILED] || ctl[S_PUTS] - ctl[S_GETS] <= 0)
        return PyLong_FromLong(-1);
    int64_t head = ctl[S_HEAD];
    uint64_t header = *(uint64_t *)(ring + (uint64_t)head % size);
    if (header > LEN_MASK) /* not a plain pickle */
        return PyLong_FromLong(-1);
    PyObject *out = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)header);
    if (out == NULL) {
        unlock(base);
        return NULL;
    }
    ring_read(ring, size, (uint64_t)head + HDR, PyBytes_AS_STRING(out), header);
    commit_get(base, ctl, head + (int64_t)(HDR + PAD(header)), 1);
    unlock(base);
    return out;
}

/* take_run(base, size, after_lock, max_items, loads) -> list: the items of the plain
 *   pickles at the head, at most max_items, up to the first record that is not one
 *   (unpickled with loads once the lock is let go); or -1 (see the top) when there
 *   is none to take. */
static PyObject *
ring_take_run(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    char *base;
    uint64_t size;
    if (parse_base(args, nargs, 5, "take_run", &base, &size) < 0)
        return NULL;
    Py_ssize_t max_items = PyLong_AsSsize_t(args[3]);
    if (max_items == -1 && PyErr_Occurred())
        return NULL;
    if (max_items < 1) {
        PyErr_SetString(PyExc_ValueError, "take_run(): max_items < 1");
        return NULL;
    }
    PyObject *out = PyList_New(0);
    if (out == NULL)
        return NULL;
    if (lock(base, args[2]) < 0) {
        Py_DECREF(out);
        return NULL;
    }
    slot_t *ctl = (slot_t *)(base + CTL_AT);
    char *ring = base + RING_AT;
    if (ctl[S_FAILED] || ctl[S_PUTS] - ctl[S_GETS] <= 0) {
        Py_DECREF(out);
        return PyLong_FromLong(-1);
    }
    int64_t available = ctl[S_PUTS] - ctl[S_GETS];
    int64_t limit = available < max_items ? available : max_items;
    int64_t head = ctl[S_HEAD];
    int64_t pos = head;
    int64_t taken = 0;
    while (taken < limit) {
        uint64_t header = *(uint64_t *)(ring + (uint64_t)pos % size);
        if (header > LEN_MASK)
            break;
        PyObject *item = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)header);
        if (item == NULL || PyList_Append(out, item) < 0) {
            Py_XDECREF(item);
            Py_DECREF(out);
            unlock(base); /* nothing committed: the records stay */
            return NULL;
        }
        Py_DECREF(item);
        ring_read(ring, size, (uint64_t)pos + HDR, PyBytes_AS_STRING(item), header);
        pos += (int64_t)(HDR + PAD(header));
        taken++;
    }
    if (taken == 0) { /* the first record is not a plain pickle */
        Py_DECREF(out);
        return PyLong_FromLong(-1);
    }
    commit_get(base, ctl, pos, taken);
    unlock(base);
    PyObject *loads = args[4];
    for (Py_ssize_t i = 0; i < taken; i++) {
        PyObject *data = PyList_GET_ITEM(out, i);
        PyObject *item = PyObject_Vectorcall(loads, &data, 1, NULL);
        if (item == NULL) {
            Py_DECREF(out);
            return NULL;
        }
        PyList_SET_ITEM(out, i, item);
        Py_DECREF(data);
    }
    return out;
}

/* frame(it, dumps, first_pickle, bufs, blob, ends, inline_max, run_bytes)
 *   Pickle items from the iterator `it` into records framed back to back at the end
 *   of the bytearray `blob`, appending each record's end offset to `ends`, until
 *   blob holds run_bytes or more (-> 0), the iterator is done (-> 1), or an item
 *   needs the Python code (-> (item, its pickle or None); its out-of-band buffers,
 *   if any, are in `bufs`). Exact int, float, str, bool, None and small bytes are
 *   pickled with dumps(item, 5); anything else with first_pickle(item, bufs.append). */
static PyObject *
ring_frame(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 8) {
        PyErr_SetString(PyExc_TypeError, "frame() takes 8 arguments");
        return NULL;
    }
    PyObject *it = args[0], *dumps = args[1], *first_pickle = args[2], *bufs = args[3];
    PyObject *blob = args[4], *ends = args[5];
    Py_ssize_t inline_max = PyLong_AsSsize_t(args[6]);
    Py_ssize_t run_bytes = PyLong_AsSsize_t(args[7]);
    if (PyErr_Occurred())
        return NULL;
    if (!PyIter_Check(it) || !PyByteArray_CheckExact(blob) || !PyList_CheckExact(ends) ||
        !PyList_CheckExact(bufs)) {
        PyErr_SetString(PyExc_TypeError, "frame(): bad arguments");
        return NULL;
    }
    PyObject *append = PyObject_GetAttrString(bufs, "append");
    if (append == NULL)
        return NULL;
    PyObject *five = PyLong_FromLong(5);
    if (five == NULL) {
        Py_DECREF(append);
        return NULL;
    }
    PyObject *result = NULL;
    for (;;) {
        if (PyByteArray_GET_SIZE(blob) >= run_bytes) {
            result = PyLong_FromLong(0);
            break;
        }
        PyObject *item = PyIter_Next(it);
        if (item == NULL) {
            if (!PyErr_Occurred())
                result = PyLong_FromLong(1);
            break;
        }
        PyTypeObject *t = Py_TYPE(item);
        PyObject *data;
        if (t == &PyLong_Type || t == &PyFloat_Type || t == &PyUnicode_Type ||
            t == &PyBool_Type || item == Py_None ||
            (t == &PyBytes_Type && PyBytes_GET_SIZE(item) < 16 * 1024)) {
            PyObject *call[2] = {item, five};
            data = PyObject_Vectorcall(dumps, call, 2, NULL);
        }
        else {
            PyObject *call[2] = {item, append};
            data = PyObject_Vectorcall(first_pickle, call, 2, NULL);
        }
        if (data == NULL) {
            Py_DECREF(item);
            break;
        }
        if (!PyBytes_CheckExact(data) || PyList_GET_SIZE(bufs) > 0 ||
            PyBytes_GET_SIZE(data) > inline_max) {
            result = PyTuple_Pack(2, item, data);
            Py_DECREF(item);
            Py_DECREF(data);
            break;
        }
        Py_DECREF(item);
        Py_ssize_t n = PyBytes_GET_SIZE(data);
        Py_ssize_t at = PyByteArray_GET_SIZE(blob);
        Py_ssize_t need = HDR + (Py_ssize_t)PAD((uint64_t)n);
        if (PyByteArray_Resize(blob, at + need) < 0) {
            Py_DECREF(data);
            break;
        }
        char *p = PyByteArray_AS_STRING(blob) + at;
        uint64_t header = (uint64_t)n;
        memcpy(p, &header, HDR);
        memcpy(p + HDR, PyBytes_AS_STRING(data), (size_t)n);
        memset(p + HDR + n, 0, (size_t)(need - HDR - n));
        Py_DECREF(data);
        PyObject *end = PyLong_FromSsize_t(at + need);
        if (end == NULL || PyList_Append(ends, end) < 0) {
            Py_XDECREF(end);
            break;
        }
        Py_DECREF(end);
    }
    Py_DECREF(five);
    Py_DECREF(append);
    return result;
}

/* spin(base, size, after_lock, microseconds) -> bool: watch the count (without the
 *   lock or the GIL) for up to that long; True once there is an item, or the channel
 *   closed or failed. */
static PyObject *
ring_spin(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    char *base;
    uint64_t size;
    if (parse_base(args, nargs, 4, "spin", &base, &size) < 0)
        return NULL;
    long micros = PyLong_AsLong(args[3]);
    if (micros == -1 && PyErr_Occurred())
        return NULL;
    slot_t *ctl = (slot_t *)(base + CTL_AT);
    int seen = 0;
    Py_BEGIN_ALLOW_THREADS
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    int64_t until = (int64_t)now.tv_sec * 1000000000 + now.tv_nsec + (int64_t)micros * 1000;
    for (unsigned i = 1;; i++) {
        if (ctl[S_PUTS] - ctl[S_GETS] > 0 || ctl[S_CLOSED] || ctl[S_FAILED]) {
            seen = 1;
            break;
        }
        if (i % 32 == 0) {
            clock_gettime(CLOCK_MONOTONIC, &now);
            if ((int64_t)now.tv_sec * 1000000000 + now.tv_nsec >= until)
                break;
        }
#if defined(__x86_64__) || defined(__i386__)
        __builtin_ia32_pause();
#elif defined(__aarch64__)
        __asm__ __volatile__("yield");
#endif
    }
    Py_END_ALLOW_THREADS
    return PyBool_FromLong(seen);
}

static PyMethodDef ring_methods[] = {
    {"put", (PyCFunction)(void (*)(void))ring_put, METH_FASTCALL, NULL},
    {"put_run", (PyCFunction)(void (*)(void))ring_put_run, METH_FASTCALL, NULL},
    {"get", (PyCFunction)(void (*)(void))ring_get, METH_FASTCALL, NULL},
    {"take_run", (PyCFunction)(void (*)(void))ring_take_run, METH_FASTCALL, NULL},
    {"frame", (PyCFunction)(void (*)(void))ring_frame, METH_FASTCALL, NULL},
    {"spin", (PyCFunction)(void (*)(void))ring_spin, METH_FASTCALL, NULL},
    {NULL, NULL, 0, NULL},
};

static int
ring_exec(PyObject *m)
{
    if (PyModule_AddIntConstant(m, "CTL_AT", CTL_AT) < 0 ||
        PyModule_AddIntConstant(m, "FUTEX_AT", FUTEX_AT) < 0 ||
        PyModule_AddIntConstant(m, "RING_AT", RING_AT) < 0 ||
        PyModule_AddIntConstant(m, "MUTEX_SIZE", (long)sizeof(pthread_mutex_t)) < 0 ||
        PyModule_AddIntConstant(m, "SLOTS", S_OP + 1) < 0)
        return -1;
    return 0;
}

static PyModuleDef_Slot ring_slots[] = {
    {Py_mod_exec, ring_exec},
#ifdef Py_mod_multiple_interpreters
    {Py_mod_multiple_interpreters, Py_MOD_PER_INTERPRETER_GIL_SUPPORTED},
#endif
#ifdef Py_mod_gil
    {Py_mod_gil, Py_MOD_GIL_NOT_USED},
#endif
    {0, NULL},
};

static struct PyModuleDef ring_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "conveyor._channels._ring",
    .m_doc = "The process channel's hot paths (see _shm.py).",
    .m_size = 0,
    .m_methods = ring_methods,
    .m_slots = ring_slots,
};

PyMODINIT_FUNC
PyInit__ring(void)
{
    return PyModuleDef_Init(&ring_module);
}
