"""C++/CUDA sources of the fused cosine-EM op (built by JIT, see cream_rt.model.fused)."""
