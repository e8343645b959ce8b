/*
 * The process channel's hot paths in C: one call across the boundary per put, per
 * get and per run of records, instead of a ctypes call for each lock operation and
 * Python bytecode for each slot of the control block.
 *
 * Everything here mirrors _shm.py, which stays the reference and the fallback: the
 * memory layout, the record formats (plain and batch records) and the commit protocol
 * are the same, and every case these functions do not handle (a full or empty
 * channel, a closed or failed one, a record that is neither a plain pickle nor a
 * batch, a lock whose owner died) is handed back to the Python code *with the lock
 * held*, which goes on from there.
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
#define KIND_SHIFT 48
#define BATCH 3
#define BATCH_AT 16 /* a batch record's body: claimed, count, then the pickle */
#define BATCH_DEPTH 4
#define BATCH_NODES 32

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

/* claim >= 0: the position of the batch record at the new head, of which `claimed`
 * items are now taken */
static void
commit_get(char *base, uint64_t size, slot_t *ctl, int64_t head, int64_t items, int64_t claim,
           int64_t claimed)
{
    BARRIER();
    ctl[S_OP] = OP_GET;
    if (claim >= 0)
        *(volatile int64_t *)(base + RING_AT + (uint64_t)(claim + HDR) % size) = claimed;
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

/* put_run(base, size, after_lock, blob, ends: list[int], counts: list[int], start: int,
 *         index: int)
 *   Put as many of the records framed back to back in blob as fit, from record
 *   `index` (at byte `start`) on; counts[i] is the number of items up to the end of
 *   record i: -> the number of records put (>= 1), or -1 when none fit (see the top). */
static PyObject *
ring_put_run(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    char *base;
    uint64_t size;
    if (parse_base(args, nargs, 8, "put_run", &base, &size) < 0)
        return NULL;
    Py_buffer view;
    if (PyObject_GetBuffer(args[3], &view, PyBUF_SIMPLE) < 0)
        return NULL;
    PyObject *ends = args[4], *counts = args[5];
    if (!PyList_CheckExact(ends) || !PyList_CheckExact(counts) ||
        PyList_GET_SIZE(counts) != PyList_GET_SIZE(ends)) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_TypeError, "put_run() needs lists of ends and counts");
        return NULL;
    }
    Py_ssize_t start = PyLong_AsSsize_t(args[6]);
    Py_ssize_t index = PyLong_AsSsize_t(args[7]);
    Py_ssize_t total = PyList_GET_SIZE(ends);
    Py_ssize_t before = 0;
    if (!PyErr_Occurred() && index > 0 && index < total)
        before = PyLong_AsSsize_t(PyList_GET_ITEM(counts, index - 1));
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
    int64_t waiting = ctl[S_PUTS] - ctl[S_GETS];
    int64_t count_room = ctl[S_MAXSIZE] - waiting;
    Py_ssize_t j = index;
    Py_ssize_t end = start;
    Py_ssize_t items = 0;
    if (!ctl[S_FAILED] && !ctl[S_CLOSED]) {
        while (j < total) {
            Py_ssize_t e = PyLong_AsSsize_t(PyList_GET_ITEM(ends, j));
            Py_ssize_t c = PyLong_AsSsize_t(PyList_GET_ITEM(counts, j)) - before;
            if (e < 0 || e > view.len || c < 1) {
                unlock(base);
                PyBuffer_Release(&view);
                if (!PyErr_Occurred())
                    PyErr_SetString(PyExc_ValueError, "put_run(): bad end");
                return NULL;
            }
            if ((uint64_t)(e - start) > free_bytes)
                break;
            /* a batch larger than maxsize (lowered since) goes into an empty channel */
            if (c > count_room && !(j == index && waiting == 0))
                break;
            end = e;
            items = c;
            j++;
        }
    }
    if (j == index) {
        PyBuffer_Release(&view);
        return PyLong_FromLong(-1);
    }
    ring_write(base + RING_AT, size, (uint64_t)tail, (const char *)view.buf + start,
               (uint64_t)(end - start));
    commit_put(base, ctl, tail + (end - start), items);
    unlock(base);
    PyBuffer_Release(&view);
    return PyLong_FromSsize_t(j - index);
}

/* Items taken from one record: a plain pickle (count == 0) or some of a batch's. */
typedef struct {
    PyObject *data; /* the pickle copied out; NULL: the batch cached by the caller */
    int64_t pos;    /* the record's stream position */
    int64_t first;  /* a batch: the first item taken, how many, how many it holds */
    int64_t m;
    int64_t count;
} piece_t;

/* Take up to `limit` items from the plain and batch records at the head, into
 * pieces[] (room for `limit`), and commit (lock held, at least one item there). Does
 * not copy the pickle of the batch at `cached_pos`. -> the number of pieces (0: the
 * head record is neither kind, nothing done), or -1 with an exception set and nothing
 * committed. */
static Py_ssize_t
take(char *base, uint64_t size, int64_t limit, int64_t cached_pos, piece_t *pieces)
{
    slot_t *ctl = (slot_t *)(base + CTL_AT);
    char *ring = base + RING_AT;
    int64_t pos = ctl[S_HEAD], tail = ctl[S_TAIL], left = limit, claim = -1, claimed = 0;
    Py_ssize_t np = 0;
    while (left > 0 && pos < tail) {
        uint64_t header = *(uint64_t *)(ring + (uint64_t)pos % size);
        uint64_t kind = header >> KIND_SHIFT, n = header & LEN_MASK;
        piece_t *p = &pieces[np];
        p->pos = pos;
        p->data = NULL;
        if (kind == 0) {
            p->data = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)n);
            if (p->data == NULL)
                goto fail;
            ring_read(ring, size, (uint64_t)pos + HDR, PyBytes_AS_STRING(p->data), n);
            p->first = 0;
            p->m = 1;
            p->count = 0;
            left--;
            np++;
        }
        else if (kind == BATCH && n >= BATCH_AT) {
            int64_t first = *(int64_t *)(ring + (uint64_t)(pos + HDR) % size);
            int64_t count = *(int64_t *)(ring + (uint64_t)(pos + HDR + 8) % size);
            if (first < 0 || first >= count) {
                PyErr_SetString(PyExc_RuntimeError, "the channel's shared memory is corrupt");
                goto fail;
            }
            int64_t m = count - first < left ? count - first : left;
            if (pos != cached_pos) {
                p->data = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(n - BATCH_AT));
                if (p->data == NULL)
                    goto fail;
                ring_read(ring, size, (uint64_t)pos + HDR + BATCH_AT, PyBytes_AS_STRING(p->data),
                          n - BATCH_AT);
            }
            p->first = first;
            p->m = m;
            p->count = count;
            left -= m;
            np++;
            if (first + m < count) { /* the record stays, partly claimed */
                claim = pos;
                claimed = first + m;
                break;
            }
        }
        else {
            break; /* out of band or a segment: for the Python code */
        }
        pos += (int64_t)(HDR + PAD(n));
    }
    if (np > 0)
        commit_get(base, size, ctl, pos, limit - left, claim, claimed);
    return np;
fail:
    for (Py_ssize_t i = 0; i < np; i++)
        Py_XDECREF(pieces[i].data);
    return -1;
}

/* The cache of the last batch unpickled, a list [(position, items)]: its position and
 * items (borrowed from *snapshot, a new reference the caller releases) or -1. */
/* Without the GIL, the cache list is read and replaced under its critical section. */
#ifdef Py_GIL_DISABLED
#define CACHE_BEGIN(cache) Py_BEGIN_CRITICAL_SECTION(cache)
#define CACHE_END() Py_END_CRITICAL_SECTION()
#else
#define CACHE_BEGIN(cache) {
#define CACHE_END() }
#endif

static int64_t
cache_snapshot_locked(PyObject *cache, PyObject **snapshot, PyObject **items)
{
    PyObject *t = PyList_GET_ITEM(cache, 0);
    if (!PyTuple_CheckExact(t) || PyTuple_GET_SIZE(t) != 2 ||
        !PyList_CheckExact(PyTuple_GET_ITEM(t, 1)))
        return -1;
    int64_t pos = PyLong_AsLongLong(PyTuple_GET_ITEM(t, 0));
    if (pos == -1 && PyErr_Occurred()) {
        PyErr_Clear();
        return -1;
    }
    Py_INCREF(t);
    *snapshot = t;
    *items = PyTuple_GET_ITEM(t, 1);
    return pos;
}

static int64_t
cache_snapshot(PyObject *cache, PyObject **snapshot, PyObject **items)
{
    *snapshot = NULL;
    *items = NULL;
    if (!PyList_CheckExact(cache) || PyList_GET_SIZE(cache) != 1)
        return -1;
    int64_t pos;
    CACHE_BEGIN(cache);
    pos = cache_snapshot_locked(cache, snapshot, items);
    CACHE_END();
    return pos;
}

/* Append (out != NULL) or return (out == NULL: the one item) the items of piece p,
 * unpickled with loads, then update the cache: the batch is kept if items remain in it,
 * forgotten if not. Consumes p->data. NULL on error (a new reference otherwise; with
 * out, Py_None). */
static PyObject *
finish_piece(piece_t *p, PyObject *loads, PyObject *cache, PyObject *cached_items, PyObject *out)
{
    PyObject *result = NULL, *items;
    if (p->count == 0) { /* a plain pickle */
        PyObject *item = PyObject_Vectorcall(loads, &p->data, 1, NULL);
        Py_CLEAR(p->data);
        if (item == NULL || out == NULL)
            return item;
        int rc = PyList_Append(out, item);
        Py_DECREF(item);
        return rc < 0 ? NULL : Py_NewRef(Py_None);
    }
    if (p->data == NULL) {
        items = Py_NewRef(cached_items);
    }
    else {
        items = PyObject_Vectorcall(loads, &p->data, 1, NULL);
        Py_CLEAR(p->data);
        if (items == NULL)
            return NULL;
    }
    if (!PyList_CheckExact(items) || PyList_GET_SIZE(items) != p->count) {
        PyErr_SetString(PyExc_RuntimeError, "a batch record does not hold what it says");
        goto done;
    }
    if (out == NULL) {
        result = Py_NewRef(PyList_GET_ITEM(items, p->first));
    }
    else {
        for (int64_t i = p->first; i < p->first + p->m; i++)
            if (PyList_Append(out, PyList_GET_ITEM(items, i)) < 0)
                goto done;
        result = Py_NewRef(Py_None);
    }
    PyObject *entry;
    if (p->first + p->m < p->count) {
        for (int64_t i = p->first; i < p->first + p->m; i++) /* not kept alive by the cache */
            PyList_SetItem(items, i, Py_NewRef(Py_None));
        entry = Py_BuildValue("(LO)", (long long)p->pos, items);
    }
    else {
        int64_t cached_pos;
        PyObject *snapshot = NULL, *ignored = NULL;
        CACHE_BEGIN(cache);
        cached_pos = cache_snapshot_locked(cache, &snapshot, &ignored);
        CACHE_END();
        Py_XDECREF(snapshot);
        if (cached_pos != p->pos)
            goto done; /* the cache holds another batch: keep it */
        entry = Py_BuildValue("(iN)", -1, PyList_New(0));
    }
    if (entry == NULL || PyList_SetItem(cache, 0, entry) < 0)
        Py_CLEAR(result);
done:
    Py_DECREF(items);
    return result;
}

/* get(base, size, after_lock, loads, cache, handback) -> the next item (unpickled once the
 *   lock is let go), or handback (see the top). cache: see cache_snapshot. */
static PyObject *
ring_get(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    char *base;
    uint64_t size;
    if (parse_base(args, nargs, 6, "get", &base, &size) < 0)
        return NULL;
    PyObject *loads = args[3], *cache = args[4], *snapshot, *cached_items;
    int64_t cached_pos = cache_snapshot(cache, &snapshot, &cached_items);
    if (lock(base, args[2]) < 0) {
        Py_XDECREF(snapshot);
        return NULL;
    }
    slot_t *ctl = (slot_t *)(base + CTL_AT);
    piece_t piece;
    Py_ssize_t np = 0;
    if (!ctl[S_FAILED] && ctl[S_PUTS] - ctl[S_GETS] > 0) {
        np = take(base, size, 1, cached_pos, &piece);
        if (np < 0) {
            unlock(base);
            Py_XDECREF(snapshot);
            return NULL;
        }
    }
    if (np == 0) { /* empty, failed, or a record for the Python code */
        Py_XDECREF(snapshot);
        return Py_NewRef(args[5]);
    }
    unlock(base);
    PyObject *item = finish_piece(&piece, loads, cache, cached_items, NULL);
    Py_XDECREF(snapshot);
    return item;
}

/* take_run(base, size, after_lock, max_items, loads, cache) -> list: up to max_items
 *   items from the plain and batch records at the head, up to the first record of
 *   another kind (unpickled with loads once the lock is let go); or -1 (see the top)
 *   when there is none to take. */
static PyObject *
ring_take_run(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    char *base;
    uint64_t size;
    if (parse_base(args, nargs, 6, "take_run", &base, &size) < 0)
        return NULL;
    Py_ssize_t max_items = PyLong_AsSsize_t(args[3]);
    if (max_items == -1 && PyErr_Occurred())
        return NULL;
    if (max_items < 1) {
        PyErr_SetString(PyExc_ValueError, "take_run(): max_items < 1");
        return NULL;
    }
    PyObject *loads = args[4], *cache = args[5], *snapshot, *cached_items;
    int64_t cached_pos = cache_snapshot(cache, &snapshot, &cached_items);
    piece_t one, *pieces = &one;
    if (lock(base, args[2]) < 0) {
        Py_XDECREF(snapshot);
        return NULL;
    }
    slot_t *ctl = (slot_t *)(base + CTL_AT);
    int64_t available = ctl[S_PUTS] - ctl[S_GETS];
    if (ctl[S_FAILED] || available <= 0) {
        Py_XDECREF(snapshot);
        return PyLong_FromLong(-1);
    }
    int64_t limit = available < max_items ? available : max_items;
    if (limit > 1) {
        pieces = PyMem_Malloc((size_t)limit * sizeof(piece_t));
        if (pieces == NULL) {
            unlock(base);
            Py_XDECREF(snapshot);
            return PyErr_NoMemory();
        }
    }
    Py_ssize_t np = take(base, size, limit, cached_pos, pieces);
    if (np <= 0) {
        if (pieces != &one)
            PyMem_Free(pieces);
        Py_XDECREF(snapshot);
        if (np < 0) {
            unlock(base);
            return NULL;
        }
        return PyLong_FromLong(-1); /* the first record is for the Python code */
    }
    unlock(base);
    PyObject *out = PyList_New(0);
    Py_ssize_t i = 0;
    if (out != NULL) {
        for (; i < np; i++) {
            PyObject *done = finish_piece(&pieces[i], loads, cache, cached_items, out);
            if (done == NULL) {
                Py_CLEAR(out);
                i++;
                break;
            }
            Py_DECREF(done);
        }
    }
    for (; i < np; i++) /* after an error: the pieces not finished */
        Py_XDECREF(pieces[i].data);
    if (pieces != &one)
        PyMem_Free(pieces);
    Py_XDECREF(snapshot);
    return out;
}

/* Ids of the dicts and lists of the items of the batch being gathered: an open
 * addressing set of pointers, so that items that share one go to different batches. */
#define ID_SLOTS 2048
#define ID_MAX 1024

typedef struct {
    void *slot[ID_SLOTS];
    int used[ID_MAX];
    int n;
} idset_t;

static int
idset_find(idset_t *s, void *p)
{
    uintptr_t h = ((uintptr_t)p >> 4) * (uintptr_t)0x9E3779B97F4A7C15ULL;
    int i = (int)(h >> 7) & (ID_SLOTS - 1);
    while (s->slot[i] != NULL && s->slot[i] != p)
        i = (i + 1) & (ID_SLOTS - 1);
    return i;
}

static void
idset_clear(idset_t *s)
{
    for (int k = 0; k < s->n; k++)
        s->slot[s->used[k]] = NULL;
    s->n = 0;
}

/* The pickle bytes of obj as a member of a batch (an upper bound, at most budget), or -1 if
 * it may not join one: made of exact str, int, float, bool, None, bytes, tuple, list and
 * dict, nested at most BATCH_DEPTH deep, at most BATCH_NODES dicts and lists (their ids
 * go into ids[*nids]). Mirrors _batch_cost in _shm.py. */
static Py_ssize_t
batch_cost(PyObject *obj, int depth, Py_ssize_t budget, PyObject **ids, int *nids)
{
    PyTypeObject *t = Py_TYPE(obj);
    if (t == &PyUnicode_Type) {
        Py_ssize_t len = PyUnicode_GET_LENGTH(obj);
        return 6 + (PyUnicode_IS_ASCII(obj) ? len : 4 * len);
    }
    if (t == &PyLong_Type) {
        int overflow;
        long long v = PyLong_AsLongLongAndOverflow(obj, &overflow);
        return overflow ? -1 : (v >= -0x80000000LL && v < 0x80000000LL) ? 5 : 10;
    }
    if (t == &PyFloat_Type)
        return 9;
    if (t == &PyBool_Type || obj == Py_None)
        return 1;
    if (t == &PyBytes_Type)
        return 6 + PyBytes_GET_SIZE(obj);
    if (depth >= BATCH_DEPTH)
        return -1;
    Py_ssize_t cost = 4, c;
    if (t == &PyTuple_Type) {
        for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(obj); i++) {
            c = batch_cost(PyTuple_GET_ITEM(obj, i), depth + 1, budget - cost, ids, nids);
            if (c < 0 || (cost += c) > budget)
                return -1;
        }
        return cost;
    }
    if (t != &PyList_Type && t != &PyDict_Type)
        return -1;
    for (int k = 0; k < *nids; k++)
        if (ids[k] == obj) /* met again inside the item: pickle's memo keeps it shared */
            return 5;
    if (*nids >= BATCH_NODES)
        return -1;
    ids[(*nids)++] = obj;
    if (t == &PyList_Type) {
        for (Py_ssize_t i = 0; i < PyList_GET_SIZE(obj); i++) {
            c = batch_cost(PyList_GET_ITEM(obj, i), depth + 1, budget - cost, ids, nids);
            if (c < 0 || (cost += c) > budget)
                return -1;
        }
        return cost;
    }
    Py_ssize_t at = 0;
    PyObject *key, *value;
    while (PyDict_Next(obj, &at, &key, &value)) {
        c = batch_cost(key, depth + 1, budget - cost, ids, nids);
        if (c < 0 || (cost += c) > budget)
            return -1;
        c = batch_cost(value, depth + 1, budget - cost, ids, nids);
        if (c < 0 || (cost += c) > budget)
            return -1;
    }
    return cost;
}

/* Append a record (header word, optional batch words, pickle, padding) to blob, and its
 * end and the items so far to ends and counts. */
static int
add_record(PyObject *blob, PyObject *ends, PyObject *counts, Py_ssize_t *done, PyObject *data,
           Py_ssize_t items)
{
    Py_ssize_t n = PyBytes_GET_SIZE(data);
    Py_ssize_t extra = items > 1 ? BATCH_AT : 0;
    Py_ssize_t body = extra + n;
    Py_ssize_t at = PyByteArray_GET_SIZE(blob);
    Py_ssize_t need = HDR + (Py_ssize_t)PAD((uint64_t)body);
    if (PyByteArray_Resize(blob, at + need) < 0)
        return -1;
    char *p = PyByteArray_AS_STRING(blob) + at;
    uint64_t words[3] = {(uint64_t)body | (extra ? (uint64_t)BATCH << KIND_SHIFT : 0), 0,
                         (uint64_t)items};
    memcpy(p, words, HDR + extra);
    memcpy(p + HDR + extra, PyBytes_AS_STRING(data), (size_t)n);
    memset(p + HDR + body, 0, (size_t)(need - HDR - body));
    *done += items;
    PyObject *end = PyLong_FromSsize_t(at + need);
    if (end == NULL || PyList_Append(ends, end) < 0) {
        Py_XDECREF(end);
        return -1;
    }
    Py_DECREF(end);
    PyObject *count = PyLong_FromSsize_t(*done);
    if (count == NULL || PyList_Append(counts, count) < 0) {
        Py_XDECREF(count);
        return -1;
    }
    Py_DECREF(count);
    return 0;
}

/* Write the items gathered in run as one batch record (one plain record for one item,
 * or one each if the batch's pickle came out larger than batch_bytes), and empty it. */
static int
flush_run(PyObject *run, PyObject *dumps, PyObject *five, PyObject *blob, PyObject *ends,
          PyObject *counts, Py_ssize_t *done, Py_ssize_t batch_bytes, idset_t *ids)
{
    Py_ssize_t k = PyList_GET_SIZE(run);
    idset_clear(ids);
    if (k == 0)
        return 0;
    int rc = -1;
    if (k > 1) {
        PyObject *call[2] = {run, five};
        PyObject *data = PyObject_Vectorcall(dumps, call, 2, NULL);
        if (data == NULL)
            return -1;
        if (PyBytes_CheckExact(data) && PyBytes_GET_SIZE(data) <= batch_bytes) {
            rc = add_record(blob, ends, counts, done, data, k);
            Py_DECREF(data);
            if (rc == 0)
                rc = PyList_SetSlice(run, 0, k, NULL);
            return rc;
        }
        Py_DECREF(data); /* more than estimated: one record each */
    }
    for (Py_ssize_t i = 0; i < k; i++) {
        PyObject *call[2] = {PyList_GET_ITEM(run, i), five};
        PyObject *data = PyObject_Vectorcall(dumps, call, 2, NULL);
        if (data == NULL)
            return -1;
        rc = PyBytes_CheckExact(data) ? add_record(blob, ends, counts, done, data, 1) : -1;
        if (rc < 0 && !PyErr_Occurred())
            PyErr_SetString(PyExc_TypeError, "dumps() did not return bytes");
        Py_DECREF(data);
        if (rc < 0)
            return -1;
    }
    return PyList_SetSlice(run, 0, k, NULL);
}

/* frame(it, dumps, first_pickle, bufs, blob, ends, counts,
 *       (inline_max, run_bytes, batch_items, batch_bytes, item_max))
 *   Pickle items from the iterator `it` into records framed back to back at the end
 *   of the bytearray `blob`, appending each record's end offset to `ends` and the
 *   number of items so far to `counts`, until blob holds run_bytes or more (-> 0), the
 *   iterator is done (-> 1), or an item needs the Python code (-> (item, its pickle or
 *   None); its out-of-band buffers, if any, are in `bufs`). Runs of up to batch_items
 *   items of plain data (see batch_cost) of at most item_max bytes, sharing no dict or
 *   list, become one batch record whose pickle (a list, dumps(run, 5)) is at most
 *   batch_bytes. Of the other items, exact int, float, str, bool, None
 *   and small bytes are pickled with dumps(item, 5); anything else with
 *   first_pickle(item, bufs.append). Mirrors _pickled_runs_python in _shm.py. */
static PyObject *
ring_frame(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 8) {
        PyErr_SetString(PyExc_TypeError, "frame() takes 8 arguments");
        return NULL;
    }
    PyObject *it = args[0], *dumps = args[1], *first_pickle = args[2], *bufs = args[3];
    PyObject *blob = args[4], *ends = args[5], *counts = args[6];
    Py_ssize_t inline_max, run_bytes, batch_items, batch_bytes, item_max;
    if (!PyArg_ParseTuple(args[7], "nnnnn", &inline_max, &run_bytes, &batch_items, &batch_bytes,
                          &item_max))
        return NULL;
    if (!PyIter_Check(it) || !PyByteArray_CheckExact(blob) || !PyList_CheckExact(ends) ||
        !PyList_CheckExact(counts) || !PyList_CheckExact(bufs)) {
        PyErr_SetString(PyExc_TypeError, "frame(): bad arguments");
        return NULL;
    }
    Py_ssize_t done = 0;
    if (PyList_GET_SIZE(counts) > 0) {
        done = PyLong_AsSsize_t(PyList_GET_ITEM(counts, PyList_GET_SIZE(counts) - 1));
        if (done == -1 && PyErr_Occurred())
            return NULL;
    }
    PyObject *append = PyObject_GetAttrString(bufs, "append");
    PyObject *five = PyLong_FromLong(5);
    PyObject *run = PyList_New(0);
    idset_t *ids = PyMem_Calloc(1, sizeof(idset_t));
    PyObject *result = NULL;
    if (append == NULL || five == NULL || run == NULL || ids == NULL) {
        if (ids == NULL && !PyErr_Occurred())
            PyErr_NoMemory();
        goto out;
    }
    Py_ssize_t run_cost = 0;
    for (;;) {
        if (PyByteArray_GET_SIZE(blob) >= run_bytes) {
            if (flush_run(run, dumps, five, blob, ends, counts, &done, batch_bytes, ids) == 0)
                result = PyLong_FromLong(0);
            break;
        }
        PyObject *item = PyIter_Next(it);
        if (item == NULL) {
            if (!PyErr_Occurred() &&
                flush_run(run, dumps, five, blob, ends, counts, &done, batch_bytes, ids) == 0)
                result = PyLong_FromLong(1);
            break;
        }
        if (batch_items > 1) {
            PyObject *mine[BATCH_NODES];
            int nmine = 0;
            Py_ssize_t cost = batch_cost(item, 0, item_max, mine, &nmine);
            if (cost >= 0 && cost <= item_max) {
                int clash = PyList_GET_SIZE(run) >= batch_items ||
                            run_cost + cost > batch_bytes - 32 || ids->n + nmine > ID_MAX;
                for (int k = 0; k < nmine && !clash; k++)
                    clash = ids->slot[idset_find(ids, mine[k])] != NULL;
                if (clash) {
                    run_cost = 0;
                    if (flush_run(run, dumps, five, blob, ends, counts, &done, batch_bytes, ids) <
                        0) {
                        Py_DECREF(item);
                        break;
                    }
                }
                for (int k = 0; k < nmine; k++) {
                    int i = idset_find(ids, mine[k]);
                    if (ids->slot[i] == NULL) {
                        ids->slot[i] = mine[k];
                        ids->used[ids->n++] = i;
                    }
                }
                run_cost += cost;
                int rc = PyList_Append(run, item);
                Py_DECREF(item);
                if (rc < 0)
                    break;
                continue;
            }
        }
        run_cost = 0;
        if (flush_run(run, dumps, five, blob, ends, counts, &done, batch_bytes, ids) < 0) {
            Py_DECREF(item);
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
        int rc = add_record(blob, ends, counts, &done, data, 1);
        Py_DECREF(data);
        if (rc < 0)
            break;
    }
out:
    PyMem_Free(ids);
    Py_XDECREF(run);
    Py_XDECREF(five);
    Py_XDECREF(append);
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
        PyModule_AddIntConstant(m, "SLOTS", S_OP + 1) < 0 ||
        PyModule_AddIntConstant(m, "BATCH", BATCH) < 0)
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
