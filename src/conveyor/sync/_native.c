/* conveyor.sync._native: the hot paths of conveyor.sync's Lock and RLock.
 *
 * One base type, `Tracked`, and two subclasses, `Lock` and `RLock`, that
 * _locks.py derives its public classes from. A Tracked holds the raw lock, the
 * owner's thread ident, the re-entry count (RLock) and where the owner took it.
 *
 *   acquire / __enter__ --try-----> raw lock free: owner, place, done (all in C)
 *                      \--busy----> timed: wait in C, GIL released
 *                       \---------> untimed: self._wait(me), the Python slow path
 *                                   (the wait-for graph), which waits through
 *                                   _acquire_raw / _release_raw
 *   release / __exit__ -----------> all in C
 *
 * "Taken at" is kept cheap: a strong reference to the caller's code object and
 * the offset of its instruction; the (filename, line) pair is computed when
 * `_taken` is read, and kept until the lock is taken from another place.
 *
 * With lock-order checking on (the flag set through set_order), every acquire
 * and release also goes through _order's bookkeeping: the per-thread stack of
 * held locks and the dict of edges seen are _order's own objects (given to
 * set_hooks). The common cases run here: pushing and popping a held lock, and an
 * acquire all of whose edges were seen before without a gate. Everything else
 * (a new edge, a gated one, a report) calls _order's Python hooks.
 *
 * Rules:
 * - every field is read and written with the GIL held; the raw lock is the only
 *   thing waited on with the GIL released. So this module does not declare
 *   Py_MOD_GIL_NOT_USED, and _locks.py does not import it on a free-threaded
 *   build (which would turn the GIL back on).
 * - `locked` mirrors the raw lock: set right after it is taken, cleared right
 *   before it is let go, so that releasing a free lock is refused, not passed on
 *   to the raw lock (a semaphore would count it).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <pythread.h>
#include <time.h>

#if PY_VERSION_HEX < 0x030B0000
#include <frameobject.h>
#endif

typedef struct {
    PyObject_HEAD
    PyThread_type_lock lock;
    unsigned long owner;   /* thread ident; 0 when nobody holds it */
    long count;            /* levels taken by the owner (RLock) */
    char locked;           /* the raw lock is taken */
    char reentrant;        /* RLock */
    PyObject *code;        /* the code object the owner took it from, or NULL */
    int lasti;             /* and the offset of its instruction there, in bytes */
    PyObject *site;        /* (filename, line) of code/lasti, or set by _taken = ... */
    PyObject *name;        /* _name */
    PyObject *created;     /* _created */
    PyObject *serial;
    PyObject *weakrefs;
} Tracked;

static PyTypeObject TrackedType, LockType, RLockType;

static int order_on = 0;
static PyObject *hook_acquired = NULL; /* _order.acquired(lock, me, checked) */
static PyObject *hook_released = NULL; /* _order.released(lock, owner) */
static PyObject *order_held = NULL;    /* _order._held: ident -> [(lock, site), ...] */
static PyObject *order_edges = NULL;   /* _order._edges: (a, b) -> _Edge */
static PyObject *str_wait, *str_gate;

/* -- the place the owner took it ------------------------------------------------- */

/* Remember the code and instruction of the Python frame that called us. Cheap: two
   compares when the lock is taken from the same place as last time. */
static void
remember_caller(Tracked *self)
{
    PyFrameObject *frame = PyEval_GetFrame(); /* borrowed */
    PyObject *code;
    int lasti;
    if (frame == NULL) {
        Py_CLEAR(self->code);
        Py_CLEAR(self->site);
        return;
    }
#if PY_VERSION_HEX >= 0x030B0000
    code = (PyObject *)PyFrame_GetCode(frame); /* new reference */
    Py_DECREF(code); /* the frame keeps it alive; we take our own below */
    lasti = PyFrame_GetLasti(frame);
#else
    code = (PyObject *)frame->f_code;
    lasti = frame->f_lasti * (int)sizeof(_Py_CODEUNIT);
#endif
    if (code == self->code && lasti == self->lasti) {
        return;
    }
    Py_INCREF(code);
    Py_XSETREF(self->code, code);
    self->lasti = lasti;
    Py_CLEAR(self->site);
}

static PyObject *
get_taken(Tracked *self, void *closure)
{
    if (self->site == NULL && self->code != NULL) {
        PyCodeObject *code = (PyCodeObject *)self->code;
        int line = PyCode_Addr2Line(code, self->lasti);
        self->site = Py_BuildValue("(Oi)", code->co_filename, line);
        if (self->site == NULL) {
            return NULL;
        }
    }
    if (self->site == NULL) {
        Py_RETURN_NONE;
    }
    Py_INCREF(self->site);
    return self->site;
}

static int
set_taken(Tracked *self, PyObject *value, void *closure)
{
    Py_CLEAR(self->code);
    if (value == Py_None) {
        value = NULL;
    }
    Py_XINCREF(value);
    Py_XSETREF(self->site, value);
    return 0;
}

/* -- waiting with the GIL released -------------------------------------------------- */

static double
monotonic_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Take the raw lock within `timeout` seconds (< 0: no limit), GIL released. As
   _thread's locks do, a signal interrupts the wait: its handlers run here (so Ctrl-C
   raises KeyboardInterrupt), then the wait goes on for what is left. 1: taken, 0:
   timed out, -1: an exception (a handler raised). */
static int
acquire_timed(Tracked *self, double timeout)
{
    PyLockStatus r;
    double deadline = timeout > 0 ? monotonic_s() + timeout : 0;
    PY_TIMEOUT_T us = timeout < 0 ? -1 : (PY_TIMEOUT_T)(timeout * 1e6);

    r = PyThread_acquire_lock_timed(self->lock, 0, 0);
    while (r == PY_LOCK_FAILURE && us != 0) {
        Py_BEGIN_ALLOW_THREADS
        r = PyThread_acquire_lock_timed(self->lock, us, 1);
        Py_END_ALLOW_THREADS
        if (r != PY_LOCK_INTR) {
            break;
        }
        if (Py_MakePendingCalls() < 0) {
            return -1;
        }
        r = PY_LOCK_FAILURE;
        if (timeout > 0) {
            double left = deadline - monotonic_s();
            us = left > 0 ? (PY_TIMEOUT_T)(left * 1e6) : 0;
            if (us == 0) { /* time is up: one last try */
                r = PyThread_acquire_lock_timed(self->lock, 0, 0);
            }
        }
    }
    return r == PY_LOCK_ACQUIRED;
}

/* -- arguments, as threading's locks take them --------------------------------------- */

static int
parse_acquire(PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames, int *blocking,
              double *timeout)
{
    PyObject *b = NULL, *t = NULL;
    Py_ssize_t i, nkw = kwnames == NULL ? 0 : PyTuple_GET_SIZE(kwnames);
    if (nargs > 2) {
        PyErr_Format(PyExc_TypeError, "acquire() takes at most 2 arguments (%zd given)", nargs);
        return -1;
    }
    if (nargs > 0) {
        b = args[0];
    }
    if (nargs > 1) {
        t = args[1];
    }
    for (i = 0; i < nkw; i++) {
        PyObject *key = PyTuple_GET_ITEM(kwnames, i);
        PyObject **slot;
        if (PyUnicode_Check(key) && PyUnicode_CompareWithASCIIString(key, "blocking") == 0) {
            slot = &b;
        }
        else if (PyUnicode_Check(key) && PyUnicode_CompareWithASCIIString(key, "timeout") == 0) {
            slot = &t;
        }
        else {
            PyErr_Format(PyExc_TypeError,
                         "acquire() got an unexpected keyword argument '%S'", key);
            return -1;
        }
        if (*slot != NULL) {
            PyErr_Format(PyExc_TypeError, "acquire() got multiple values for argument '%S'",
                         key);
            return -1;
        }
        *slot = args[nargs + i];
    }
    *blocking = 1;
    *timeout = -1;
    if (b != NULL) {
#if PY_VERSION_HEX >= 0x030C0000
        *blocking = PyObject_IsTrue(b);
#else
        long v = PyLong_AsLong(b); /* before 3.12, threading wants an integer */
        if (v == -1 && PyErr_Occurred()) {
            return -1;
        }
        *blocking = v != 0;
#endif
        if (*blocking < 0) {
            return -1;
        }
    }
    if (t != NULL) {
        if (PyFloat_Check(t)) {
            *timeout = PyFloat_AS_DOUBLE(t);
            if (*timeout != *timeout) {
                PyErr_SetString(PyExc_ValueError, "Invalid value NaN (not a number)");
                return -1;
            }
        }
        else {
            long long v = PyLong_AsLongLong(t);
            if (v == -1 && PyErr_Occurred()) {
                return -1;
            }
            *timeout = (double)v;
        }
    }
    if (!*blocking && *timeout != -1) {
        PyErr_SetString(PyExc_ValueError, "can't specify a timeout for a non-blocking call");
        return -1;
    }
    if (*timeout < 0 && *timeout != -1) {
#if PY_VERSION_HEX >= 0x030D0000
        PyErr_SetString(PyExc_ValueError, "timeout value must be a non-negative number");
#else
        PyErr_SetString(PyExc_ValueError, "timeout value must be positive");
#endif
        return -1;
    }
    if (*timeout * 1e6 > (double)PY_TIMEOUT_MAX) {
        PyErr_SetString(PyExc_OverflowError, "timeout value is too large");
        return -1;
    }
    return 0;
}

/* -- lock-order bookkeeping (checking on) -------------------------------------------- */

/* The lock's class for lock-order checking, as _Tracked.key: its name, or where it
   was made (borrowed). */
static PyObject *
order_key(Tracked *lock)
{
    if (lock->name != NULL && lock->name != Py_None && PyObject_IsTrue(lock->name) == 1) {
        return lock->name;
    }
    return lock->created != NULL ? lock->created : Py_None;
}

/* Does acquiring `lock` while holding `held` add nothing to the graph: is every edge
   "held lock, then lock" already recorded without a gate? 1 yes, 0 no (the Python
   hook decides), -1 error. As _order._edges_to's first test; any other case (a new
   edge, an ignored one, a gated one) goes to Python. */
static int
edges_all_seen(PyObject *held, Tracked *lock)
{
    Py_ssize_t i, n = PyList_GET_SIZE(held);
    PyObject *key = order_key(lock);
    for (i = 0; i < n; i++) {
        PyObject *entry = PyList_GET_ITEM(held, i);
        PyObject *pair, *edge, *gate;
        Tracked *h;
        PyObject *h_key;
        int seen;
        if (!PyTuple_Check(entry) || PyTuple_GET_SIZE(entry) != 2) {
            return 0;
        }
        h = (Tracked *)PyTuple_GET_ITEM(entry, 0);
        if ((PyObject *)h == (PyObject *)lock) {
            continue;
        }
        if (!PyObject_TypeCheck((PyObject *)h, &TrackedType)) {
            return 0;
        }
        h_key = order_key(h);
        if (h_key == key || (PyUnicode_Check(h_key) && PyUnicode_Check(key) &&
                             PyUnicode_Compare(h_key, key) == 0)) {
            /* one class: ordered by instance */
            PyObject *a = PyTuple_Pack(2, h_key, h->serial);
            PyObject *b = a == NULL ? NULL : PyTuple_Pack(2, key, lock->serial);
            pair = b == NULL ? NULL : PyTuple_Pack(2, a, b);
            Py_XDECREF(a);
            Py_XDECREF(b);
        }
        else {
            pair = PyTuple_Pack(2, h_key, key);
        }
        if (pair == NULL) {
            return -1;
        }
        edge = PyDict_GetItemWithError(order_edges, pair); /* borrowed */
        Py_DECREF(pair);
        if (edge == NULL) {
            return PyErr_Occurred() ? -1 : 0;
        }
        gate = PyObject_GetAttr(edge, str_gate);
        if (gate == NULL) {
            return -1;
        }
        seen = PyAnySet_Check(gate) && PySet_GET_SIZE(gate) == 0;
        Py_DECREF(gate);
        if (!seen) {
            return 0;
        }
    }
    return 1;
}

/* After `self` was taken by `me`: _order.acquired(self, me, checked), with its
   common cases here. On error (on_problem="raise": the hook let the lock go),
   returns -1. */
static int
order_acquired(Tracked *self, unsigned long me, int checked)
{
    PyObject *me_obj = PyLong_FromUnsignedLong(me);
    PyObject *held, *site, *entry, *r;
    int fast = 0;
    if (me_obj == NULL) {
        return -1;
    }
    held = PyDict_GetItemWithError(order_held, me_obj); /* borrowed */
    if (held == NULL && PyErr_Occurred()) {
        goto error;
    }
    if (held != NULL && PyList_CheckExact(held)) {
        fast = !checked || PyList_GET_SIZE(held) == 0;
        if (!fast) {
            fast = edges_all_seen(held, self);
            if (fast < 0) {
                goto error;
            }
        }
    }
    if (!fast) {
        r = PyObject_CallFunctionObjArgs(hook_acquired, (PyObject *)self, me_obj,
                                         checked ? Py_True : Py_False, NULL);
        Py_DECREF(me_obj);
        if (r == NULL) {
            return -1;
        }
        Py_DECREF(r);
        return 0;
    }
    site = get_taken(self, NULL);
    if (site == NULL) {
        goto error;
    }
    entry = PyTuple_Pack(2, (PyObject *)self, site);
    Py_DECREF(site);
    if (entry == NULL || PyList_Append(held, entry) < 0) {
        Py_XDECREF(entry);
        goto error;
    }
    Py_DECREF(entry);
    Py_DECREF(me_obj);
    return 0;
error:
    Py_DECREF(me_obj);
    return -1;
}

/* After `self` was let go: it leaves the stack of `owner`, as _order.released. */
static int
order_released(Tracked *self, unsigned long owner)
{
    PyObject *owner_obj = PyLong_FromUnsignedLong(owner);
    PyObject *held, *r;
    Py_ssize_t i;
    if (owner_obj == NULL) {
        return -1;
    }
    held = PyDict_GetItemWithError(order_held, owner_obj);
    if (held == NULL && PyErr_Occurred()) {
        Py_DECREF(owner_obj);
        return -1;
    }
    if (held == NULL || !PyList_CheckExact(held)) {
        r = PyObject_CallFunctionObjArgs(hook_released, (PyObject *)self, owner_obj, NULL);
        Py_DECREF(owner_obj);
        if (r == NULL) {
            return -1;
        }
        Py_DECREF(r);
        return 0;
    }
    Py_DECREF(owner_obj);
    for (i = PyList_GET_SIZE(held) - 1; i >= 0; i--) {
        PyObject *entry = PyList_GET_ITEM(held, i);
        if (PyTuple_Check(entry) && PyTuple_GET_SIZE(entry) >= 1 &&
            PyTuple_GET_ITEM(entry, 0) == (PyObject *)self) {
            return PySequence_DelItem(held, i);
        }
    }
    return 0;
}

/* -- acquire and release -------------------------------------------------------------- */

/* The raw lock is ours now: record the owner and the place; tell _order. */
static PyObject *
took(Tracked *self, unsigned long me, int checked)
{
    self->locked = 1;
    self->owner = me;
    self->count = 1;
    remember_caller(self);
    if (order_on && order_acquired(self, me, checked) < 0) {
        return NULL;
    }
    Py_RETURN_TRUE;
}

static PyObject *
do_acquire(Tracked *self, int blocking, double timeout)
{
    unsigned long me = PyThread_get_thread_ident();
    if (self->reentrant && self->owner == me) {
        if (self->count == LONG_MAX) {
            PyErr_SetString(PyExc_OverflowError, "Internal lock count overflowed");
            return NULL;
        }
        self->count++;
        Py_RETURN_TRUE;
    }
    if (PyThread_acquire_lock(self->lock, NOWAIT_LOCK)) {
        return took(self, me, blocking && timeout < 0);
    }
    if (!blocking) {
        Py_RETURN_FALSE;
    }
    if (timeout >= 0) { /* a timed wait ends by itself: not part of the graph */
        int r = acquire_timed(self, timeout);
        if (r < 0) {
            return NULL;
        }
        if (r == 0) {
            Py_RETURN_FALSE;
        }
        return took(self, me, 0);
    }
    else {
        PyObject *me_obj = PyLong_FromUnsignedLong(me);
        PyObject *r;
        if (me_obj == NULL) {
            return NULL;
        }
        r = PyObject_CallMethodOneArg((PyObject *)self, str_wait, me_obj);
        Py_DECREF(me_obj);
        if (r == NULL) {
            return NULL;
        }
        Py_DECREF(r);
        return took(self, me, 1);
    }
}

static PyObject *
tracked_acquire(Tracked *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    int blocking;
    double timeout;
    if (nargs == 0 && kwnames == NULL) {
        return do_acquire(self, 1, -1);
    }
    if (parse_acquire(args, nargs, kwnames, &blocking, &timeout) < 0) {
        return NULL;
    }
    return do_acquire(self, blocking, timeout);
}

static PyObject *
tracked_enter(Tracked *self, PyObject *unused)
{
    return do_acquire(self, 1, -1);
}

/* Let go of every level: the raw lock is released, then _order is told. */
static int
let_go(Tracked *self)
{
    unsigned long owner = self->owner;
    self->owner = 0;
    self->count = 0;
    self->locked = 0;
    PyThread_release_lock(self->lock);
    if (order_on && owner != 0) {
        return order_released(self, owner);
    }
    return 0;
}

static PyObject *
tracked_release(Tracked *self, PyObject *unused)
{
    if (self->reentrant) {
        if (self->owner != PyThread_get_thread_ident() || self->count <= 0) {
            PyErr_SetString(PyExc_RuntimeError, "cannot release un-acquired lock");
            return NULL;
        }
        if (--self->count > 0) {
            Py_RETURN_NONE;
        }
    }
    else if (!self->locked) {
        PyErr_SetString(PyExc_RuntimeError, "release unlocked lock");
        return NULL;
    }
    if (let_go(self) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *
tracked_exit(Tracked *self, PyObject *const *args, Py_ssize_t nargs)
{
    return tracked_release(self, NULL);
}

static PyObject *
tracked_locked(Tracked *self, PyObject *unused)
{
    return PyBool_FromLong(self->locked);
}

static PyObject *
tracked_is_owned(Tracked *self, PyObject *unused)
{
    return PyBool_FromLong(self->locked && self->owner == PyThread_get_thread_ident());
}

/* For threading.Condition.wait(): let go of every level; returns the count (RLock)
   or None (Lock) for _acquire_restore. */
static PyObject *
tracked_release_save(Tracked *self, PyObject *unused)
{
    long count = self->count;
    if (!self->reentrant) {
        return tracked_release(self, NULL);
    }
    if (self->owner != PyThread_get_thread_ident() || count <= 0) {
        PyErr_SetString(PyExc_RuntimeError, "cannot wait on un-acquired lock");
        return NULL;
    }
    if (let_go(self) < 0) {
        return NULL;
    }
    return PyLong_FromLong(count);
}

/* For the Python slow path: take the raw lock within `timeout` seconds (-1: no
   limit), GIL released; the caller records the owner. */
static PyObject *
tracked_acquire_raw(Tracked *self, PyObject *arg)
{
    double timeout = PyFloat_AsDouble(arg);
    int r;
    if (timeout == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (timeout * 1e6 > (double)PY_TIMEOUT_MAX) {
        PyErr_SetString(PyExc_OverflowError, "timeout value is too large");
        return NULL;
    }
    r = acquire_timed(self, timeout);
    if (r < 0) {
        return NULL;
    }
    if (r) {
        self->locked = 1;
    }
    return PyBool_FromLong(r);
}

static PyObject *
tracked_release_raw(Tracked *self, PyObject *unused)
{
    if (!self->locked) {
        PyErr_SetString(PyExc_RuntimeError, "release unlocked lock");
        return NULL;
    }
    self->locked = 0;
    PyThread_release_lock(self->lock);
    Py_RETURN_NONE;
}

/* After a fork, in the child: a new raw lock, free. The old one is left as it is
   (it may be mid-operation by a thread that no longer exists). */
static PyObject *
tracked_at_fork_reinit(Tracked *self, PyObject *unused)
{
    PyThread_type_lock lock = PyThread_allocate_lock();
    if (lock == NULL) {
        PyErr_SetString(PyExc_MemoryError, "cannot allocate lock");
        return NULL;
    }
    self->lock = lock;
    self->owner = 0;
    self->count = 0;
    self->locked = 0;
    Py_RETURN_NONE;
}

/* -- the type ------------------------------------------------------------------------- */

static PyObject *
tracked_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    Tracked *self = (Tracked *)type->tp_alloc(type, 0);
    if (self == NULL) {
        return NULL;
    }
    self->lock = PyThread_allocate_lock();
    if (self->lock == NULL) {
        Py_DECREF(self);
        PyErr_SetString(PyExc_MemoryError, "cannot allocate lock");
        return NULL;
    }
    self->reentrant = PyType_IsSubtype(type, &RLockType);
    Py_INCREF(Py_None);
    self->name = Py_None;
    Py_INCREF(Py_None);
    self->created = Py_None;
    Py_INCREF(Py_None);
    self->serial = Py_None;
    return (PyObject *)self;
}

static int
tracked_traverse(Tracked *self, visitproc visit, void *arg)
{
    Py_VISIT(self->code);
    Py_VISIT(self->site);
    Py_VISIT(self->name);
    Py_VISIT(self->created);
    Py_VISIT(self->serial);
    return 0;
}

static int
tracked_clear(Tracked *self)
{
    Py_CLEAR(self->code);
    Py_CLEAR(self->site);
    Py_CLEAR(self->name);
    Py_CLEAR(self->created);
    Py_CLEAR(self->serial);
    return 0;
}

/* The types are static: a Python subclass's dealloc drops its reference to its
   type after this. */
static void
tracked_dealloc(Tracked *self)
{
    PyObject_GC_UnTrack(self);
    if (self->weakrefs != NULL) {
        PyObject_ClearWeakRefs((PyObject *)self);
    }
    tracked_clear(self);
    if (self->lock != NULL) {
        if (self->locked) {
            PyThread_release_lock(self->lock);
        }
        PyThread_free_lock(self->lock);
    }
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *
get_owner(Tracked *self, void *closure)
{
    if (self->owner == 0) {
        Py_RETURN_NONE;
    }
    return PyLong_FromUnsignedLong(self->owner);
}

static PyObject *
get_count(Tracked *self, void *closure)
{
    return PyLong_FromLong(self->count);
}

static int
set_count(Tracked *self, PyObject *value, void *closure)
{
    long count;
    if (value == NULL) {
        PyErr_SetString(PyExc_AttributeError, "cannot delete _count");
        return -1;
    }
    count = PyLong_AsLong(value);
    if (count == -1 && PyErr_Occurred()) {
        return -1;
    }
    self->count = count;
    return 0;
}

static PyMethodDef tracked_methods[] = {
    {"acquire", (PyCFunction)(void (*)(void))tracked_acquire, METH_FASTCALL | METH_KEYWORDS,
     "acquire(blocking=True, timeout=-1): as threading's locks."},
    {"__enter__", (PyCFunction)tracked_enter, METH_NOARGS, NULL},
    {"release", (PyCFunction)tracked_release, METH_NOARGS, "release(): as threading's locks."},
    {"__exit__", (PyCFunction)(void (*)(void))tracked_exit, METH_FASTCALL, NULL},
    {"locked", (PyCFunction)tracked_locked, METH_NOARGS, NULL},
    {"_is_owned", (PyCFunction)tracked_is_owned, METH_NOARGS, NULL},
    {"_release_save", (PyCFunction)tracked_release_save, METH_NOARGS, NULL},
    {"_acquire_raw", (PyCFunction)tracked_acquire_raw, METH_O, NULL},
    {"_release_raw", (PyCFunction)tracked_release_raw, METH_NOARGS, NULL},
    {"_at_fork_reinit", (PyCFunction)tracked_at_fork_reinit, METH_NOARGS, NULL},
    {NULL},
};

static PyMemberDef tracked_members[] = {
    {"_name", T_OBJECT, offsetof(Tracked, name), 0, NULL},
    {"_created", T_OBJECT, offsetof(Tracked, created), 0, NULL},
    {"serial", T_OBJECT, offsetof(Tracked, serial), 0, NULL},
    {NULL},
};

static PyGetSetDef tracked_getset[] = {
    {"owner", (getter)get_owner, NULL, "ident of the thread holding it, or None", NULL},
    {"_taken", (getter)get_taken, (setter)set_taken, "(filename, line) where it was taken",
     NULL},
    {"_count", (getter)get_count, (setter)set_count, NULL, NULL},
    {NULL},
};

static PyTypeObject TrackedType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "conveyor.sync._native.Tracked",
    .tp_basicsize = sizeof(Tracked),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "The raw lock, its owner and where the owner took it.",
    .tp_new = tracked_new,
    .tp_dealloc = (destructor)tracked_dealloc,
    .tp_traverse = (traverseproc)tracked_traverse,
    .tp_clear = (inquiry)tracked_clear,
    .tp_weaklistoffset = offsetof(Tracked, weakrefs),
    .tp_methods = tracked_methods,
    .tp_members = tracked_members,
    .tp_getset = tracked_getset,
};

static PyTypeObject LockType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "conveyor.sync._native.Lock",
    .tp_basicsize = sizeof(Tracked),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE, /* GC: inherited */
    .tp_doc = "A lock: released by any thread.",
    .tp_base = &TrackedType,
};

static PyTypeObject RLockType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "conveyor.sync._native.RLock",
    .tp_basicsize = sizeof(Tracked),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE, /* GC: inherited */
    .tp_doc = "A re-entrant lock: re-entered and released by its owner only.",
    .tp_base = &TrackedType,
};

/* -- the module ----------------------------------------------------------------------- */

static PyObject *
set_hooks(PyObject *module, PyObject *args)
{
    PyObject *acquired, *released, *held, *edges;
    if (!PyArg_ParseTuple(args, "OOO!O!:set_hooks", &acquired, &released, &PyDict_Type, &held,
                          &PyDict_Type, &edges)) {
        return NULL;
    }
    Py_INCREF(acquired);
    Py_XSETREF(hook_acquired, acquired);
    Py_INCREF(released);
    Py_XSETREF(hook_released, released);
    Py_INCREF(held);
    Py_XSETREF(order_held, held);
    Py_INCREF(edges);
    Py_XSETREF(order_edges, edges);
    Py_RETURN_NONE;
}

static PyObject *
set_order(PyObject *module, PyObject *arg)
{
    int on = PyObject_IsTrue(arg);
    if (on < 0) {
        return NULL;
    }
    if (on && hook_acquired == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "set_hooks() first");
        return NULL;
    }
    order_on = on;
    Py_RETURN_NONE;
}

static PyMethodDef module_methods[] = {
    {"set_hooks", set_hooks, METH_VARARGS,
     "set_hooks(acquired, released, held, edges): _order's hooks and its bookkeeping."},
    {"set_order", set_order, METH_O, "set_order(on): is lock-order checking on?"},
    {NULL},
};

static struct PyModuleDef native_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "conveyor.sync._native",
    .m_doc = "The hot paths of conveyor.sync's Lock and RLock.",
    .m_size = -1,
    .m_methods = module_methods,
};

PyMODINIT_FUNC
PyInit__native(void)
{
    PyObject *m;
    str_wait = PyUnicode_InternFromString("_wait");
    str_gate = PyUnicode_InternFromString("gate");
    if (str_wait == NULL || str_gate == NULL) {
        return NULL;
    }
    if (PyType_Ready(&TrackedType) < 0 || PyType_Ready(&LockType) < 0 ||
        PyType_Ready(&RLockType) < 0) {
        return NULL;
    }
    m = PyModule_Create(&native_module);
    if (m == NULL) {
        return NULL;
    }
    Py_INCREF(&TrackedType);
    Py_INCREF(&LockType);
    Py_INCREF(&RLockType);
    if (PyModule_AddObject(m, "Tracked", (PyObject *)&TrackedType) < 0 ||
        PyModule_AddObject(m, "Lock", (PyObject *)&LockType) < 0 ||
        PyModule_AddObject(m, "RLock", (PyObject *)&RLockType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
