// fastcnn operator schemas. Every op is declared here once; CPU kernels register in csrc/cpu/<op>.cpp,
// CUDA kernels in csrc/cuda/<op>.cu, autograd and fake (meta) kernels in fastcnn/ops.py.
//
// `activation` is an int code shared by every fused epilogue, from the table in common/activation.h
// (0 none, then one code per activation; a parametrised one, leaky_relu, carries its parameter in the
// high bits); each activation in that table also gets its standalone op. Backward ops return a
// zero-element tensor for each gradient whose output_mask entry is false, so that every schema returns
// plain Tensors.
#include <Python.h>
#include <torch/library.h>

#include "common/activation.h"

// Importing fastcnn._C (or the emulation build's fastcnn._C_emu) from Python registers the ops; the
// module itself holds no functions. torch's build defines TORCH_EXTENSION_NAME as the module's name.
#define FASTCNN_STRINGIFY2(x) #x
#define FASTCNN_STRINGIFY(x) FASTCNN_STRINGIFY2(x)
#define FASTCNN_CONCAT2(a, b) a##b
#define FASTCNN_CONCAT(a, b) FASTCNN_CONCAT2(a, b)
extern "C" {
PyObject* FASTCNN_CONCAT(PyInit_, TORCH_EXTENSION_NAME)(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, FASTCNN_STRINGIFY(TORCH_EXTENSION_NAME),
                                          nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

TORCH_LIBRARY(fastcnn, m) {
  m.def(
      "conv2d(Tensor input, Tensor weight, Tensor? bias, int[2] stride, int[2] padding, int[2] dilation, "
      "int groups, int activation, Tensor? residual) -> Tensor");
  m.def(
      "conv2d_backward(Tensor grad_output, Tensor input, Tensor weight, Tensor? output, int[2] stride, "
      "int[2] padding, int[2] dilation, int groups, int activation, bool[3] output_mask) "
      "-> (Tensor, Tensor, Tensor)");
  m.def("linear(Tensor input, Tensor weight, Tensor? bias, int activation) -> Tensor");
  m.def(
      "linear_backward(Tensor grad_output, Tensor input, Tensor weight, Tensor? output, int activation, "
      "bool[3] output_mask) -> (Tensor, Tensor, Tensor)");
  m.def(
      "max_pool2d(Tensor input, int[2] kernel_size, int[2] stride, int[2] padding, int[2] dilation, "
      "bool ceil_mode) -> (Tensor, Tensor)");
  m.def("max_pool2d_backward(Tensor grad_output, Tensor input, Tensor indices) -> Tensor");
  m.def(
      "avg_pool2d(Tensor input, int[2] kernel_size, int[2] stride, int[2] padding, bool ceil_mode, "
      "bool count_include_pad, int? divisor_override) -> Tensor");
  m.def(
      "avg_pool2d_backward(Tensor grad_output, Tensor input, int[2] kernel_size, int[2] stride, "
      "int[2] padding, bool ceil_mode, bool count_include_pad, int? divisor_override) -> Tensor");
  m.def("adaptive_avg_pool2d(Tensor input, int[2] output_size) -> Tensor");
  m.def("adaptive_avg_pool2d_backward(Tensor grad_output, Tensor input) -> Tensor");
#define FASTCNN_DEFINE_ACTIVATION_OP(Enum, code, op, Functor) m.def(#op "(Tensor input) -> Tensor");
  FASTCNN_PLAIN_ACTIVATIONS(FASTCNN_DEFINE_ACTIVATION_OP)
#undef FASTCNN_DEFINE_ACTIVATION_OP
#define FASTCNN_DEFINE_ACTIVATION_OP(Enum, code, op, Functor)                                         \
  m.def((std::string(#op "(Tensor input, float ") + fastcnn::Functor::kParameterName + ") -> Tensor") \
            .c_str());
  FASTCNN_PARAMETRISED_ACTIVATIONS(FASTCNN_DEFINE_ACTIVATION_OP)
#undef FASTCNN_DEFINE_ACTIVATION_OP
  m.def("add(Tensor input, Tensor other, int activation) -> Tensor");
  // `saved` is what the activation's derivative is written in: its output for relu, sigmoid, tanh, relu6
  // and leaky_relu with a slope >= 0, its input for the others (grad_from_output in common/activation.h).
  m.def("activation_backward(Tensor grad_output, Tensor saved, int activation) -> Tensor");
  // batch_norm returns (output, mean, var): the batch's statistics (var biased) when training, else copies
  // of the running ones, in float32 (float64 for float64 input); the running statistics are updated by
  // batch_norm_update_running_stats, separately, so that batch_norm stays functional and differentiable.
  m.def(
      "batch_norm(Tensor input, Tensor? weight, Tensor? bias, Tensor? running_mean, Tensor? running_var, "
      "bool training, float eps, int activation) -> (Tensor, Tensor, Tensor)");
  m.def(
      "batch_norm_backward(Tensor grad_output, Tensor input, Tensor? weight, Tensor mean, Tensor var, "
      "Tensor? output, bool training, float eps, int activation, bool[3] output_mask) "
      "-> (Tensor, Tensor, Tensor)");
  m.def(
      "batch_norm_update_running_stats(Tensor(a!) running_mean, Tensor(b!) running_var, Tensor mean, "
      "Tensor var, float momentum, int count) -> ()");
  // layer_norm normalises input's dims [dim, dim + len(normalized_shape)) and returns (output, mean, rstd),
  // the statistics one per normalised group (float32, float64 for float64 input).
  m.def(
      "layer_norm(Tensor input, int dim, int[] normalized_shape, Tensor? weight, Tensor? bias, float eps) "
      "-> (Tensor, Tensor, Tensor)");
  m.def(
      "layer_norm_backward(Tensor grad_output, Tensor input, int dim, int[] normalized_shape, Tensor? "
      "weight, "
      "Tensor mean, Tensor rstd, bool[3] output_mask) -> (Tensor, Tensor, Tensor)");
  m.def("augment_affine(Tensor input, Tensor theta, Tensor mean, Tensor std, int[2] out_size) -> Tensor");
}
