// The Python module lcie_fast._C. Importing it (after torch) runs the static op registrations
// of the kernels linked into it (TORCH_LIBRARY_FRAGMENT(lcie_fast, ...)); it holds no functions.

#include <Python.h>

namespace {

PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT,
    "_C",
    "lcie_fast CUDA kernels; ops are registered as torch.ops.lcie_fast.*",
    -1,
    nullptr,
};

}  // namespace

PyMODINIT_FUNC PyInit__C(void) {
  PyObject* module = PyModule_Create(&module_def);
  if (module != nullptr) {
    PyModule_AddStringConstant(module, "__version__", LCIE_FAST_VERSION);
  }
  return module;
}
