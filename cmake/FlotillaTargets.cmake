# Helpers shared by Flotilla's targets.

# Warnings for Flotilla's own code (not for generated or third-party code).
function(flotilla_warnings target)
  target_compile_options(${target} PRIVATE -Wall -Wextra -Wno-unused-parameter)
endfunction()

# Gives `target` a precompiled header of LibTorch's umbrella header: a TU including
# torch/torch.h costs 11-16 s without it and ~5 s with it. Each target gets its own PCH
# (reusing one across targets silently fails when their flags differ, e.g. -fPIC vs -fPIE).
function(flotilla_torch_pch target)
  target_precompile_headers(${target} PRIVATE <torch/torch.h>)
endfunction()
