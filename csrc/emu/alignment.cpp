// Misaligned accesses in emulated kernels. The emulation build compiles the CUDA sources with
// -fsanitize=alignment and no sanitizer runtime: the compiler then calls the handler below for every
// load or store through a pointer not aligned to its type (a 16-byte uint4 or Vec at an 8-byte address,
// say), which a GPU would fault on ("misaligned address"). Inside a kernel the handler stops the launch
// with the kernel, thread, source line and address; anywhere else it reports the access and carries on.
// The ASan/UBSan build links the real sanitizer runtime instead (FASTCNN_EMU_SANITIZERS).
#include <cstdint>
#include <cstdio>
#include <string>

#include "emu/scheduler.h"

#if !defined(FASTCNN_EMU_SANITIZERS)

namespace {

// The layouts the compiler passes (shared by GCC and Clang since their "v1" handlers).
struct SourceLocation {
  const char* file;
  uint32_t line;
  uint32_t column;
};
struct TypeDescriptor {
  uint16_t kind;
  uint16_t info;
  char name[1];
};
struct TypeMismatchData {
  SourceLocation location;
  const TypeDescriptor* type;
  unsigned char log_alignment;
  unsigned char type_check_kind;
};

void report(TypeMismatchData* data, uintptr_t pointer) {
  const uintptr_t alignment = uintptr_t{1} << data->log_alignment;
  if (pointer % alignment == 0) return;  // not an alignment fault (null checks are not enabled)
  std::string file = data->location.file != nullptr ? data->location.file : "?";
  const auto at = file.find("csrc/");
  if (at != std::string::npos) file = file.substr(at + 5);
  char address[32];
  std::snprintf(address, sizeof(address), "0x%llx", static_cast<unsigned long long>(pointer));
  const std::string message = "misaligned access at " + file + ":" + std::to_string(data->location.line) +
                              ": address " + address + " is not " + std::to_string(alignment) +
                              "-byte aligned for type " + data->type->name;
  if (fastcnn::emu::current_lane() >= 0) fastcnn::emu::fail(message);
  std::fprintf(stderr, "fastcnn emulator (host code): %s\n", message.c_str());
}

}  // namespace

extern "C" {
void __ubsan_handle_type_mismatch_v1(TypeMismatchData* data, uintptr_t pointer) {
  report(data, pointer);
}
void __ubsan_handle_type_mismatch_v1_abort(TypeMismatchData* data, uintptr_t pointer) {
  report(data, pointer);
}
}

#endif
