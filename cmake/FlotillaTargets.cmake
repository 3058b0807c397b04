# Helpers shared by Flotilla's targets.

# Warnings for Flotilla's own code (not for generated or third-party code).
function(flotilla_warnings target)
  target_compile_options(${target} PRIVATE -Wall -Wextra -Wno-unused-parameter)
endfunction()

# One precompiled header of LibTorch's umbrella header, built once (a TU including
# torch/torch.h costs 11-16 s without it, ~5 s with it; building the PCH itself ~20 s, so one
# PCH per target would cost more than it saves). Every target that compiles LibTorch code
# reuses it, which needs identical code-generation flags: no target here sets
# POSITION_INDEPENDENT_CODE (a -fPIC/-fPIE mismatch would silently disable the reuse, and
# -Winvalid-pch, which CMake adds, would say so).
function(flotilla_torch_pch target)
  if(NOT TARGET flotilla_torch_pch)
    file(WRITE ${CMAKE_BINARY_DIR}/flotilla_torch_pch.cpp "// Carries the shared LibTorch PCH.\n")
    add_library(flotilla_torch_pch STATIC ${CMAKE_BINARY_DIR}/flotilla_torch_pch.cpp)
    target_link_libraries(flotilla_torch_pch PUBLIC torch)
    target_precompile_headers(flotilla_torch_pch PRIVATE <torch/torch.h>)
  endif()
  target_precompile_headers(${target} REUSE_FROM flotilla_torch_pch)
endfunction()
