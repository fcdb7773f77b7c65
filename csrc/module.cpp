// The Python module `dlsn._C`. It has no Python-visible members: importing it loads this shared
// library, whose static initialisers run the TORCH_LIBRARY registrations (torch.ops.dlsn.*).
#include <Python.h>

extern "C" {
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {
      PyModuleDef_HEAD_INIT,
      "_C",  // name
      nullptr,  // documentation
      -1,    // per-interpreter state: none
      nullptr,  // methods
      nullptr,  // slots
      nullptr,  // traverse
      nullptr,  // clear
      nullptr,  // free
  };
  return PyModule_Create(&module_def);
}
}
