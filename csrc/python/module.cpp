// The Python extension module granet_kernels._C. Importing it loads the op registrations of
// ops.cpp (static initialisers in the same shared object); it also reports what was built.
// Kept apart from csrc/*.cpp so the CMake build (a plain C++ library) needs no Python.
#include <Python.h>

#include "cpu/isa.h"

namespace {

PyObject* build_info(PyObject*, PyObject*) {
#ifdef GRANET_WITH_CUDA
  PyObject* cuda = Py_True;
#else
  PyObject* cuda = Py_False;
#endif
  return Py_BuildValue("{s:O,s:s,s:s}", "cuda", cuda, "cpu_isa", granet::cpu::isa_name(granet::cpu::active_isa()),
                       "compiler", __VERSION__);
}

PyMethodDef methods[] = {
    {"build_info", build_info, METH_NOARGS, "What this build of granet_kernels._C contains."},
    {nullptr, nullptr, 0, nullptr}};

PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", "granet_kernels native kernels", -1, methods};

}  // namespace

PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&module); }
