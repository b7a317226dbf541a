/* Defines pp_ops_table_<PP_ISA> from the kernels the template instantiated in this file. */
#define PP_T_(name, s, isa) pp_##name##_##s##_##isa
#define PP_T(name, s, isa) PP_T_(name, s, isa)
#define PP_TABLE_(isa) pp_ops_table_##isa
#define PP_TABLE(isa) PP_TABLE_(isa)
#define PP_STR_(x) #x
#define PP_STR(x) PP_STR_(x)
#define PP_ENTRIES(s)                                             \
    .act_quant_##s = PP_T(act_quant, s, PP_ISA),                  \
    .rmsnorm_quant_fwd_##s = PP_T(rmsnorm_quant_fwd, s, PP_ISA),  \
    .rmsnorm_bwd_##s = PP_T(rmsnorm_bwd, s, PP_ISA),              \
    .relu2_quant_fwd_##s = PP_T(relu2_quant_fwd, s, PP_ISA),      \
    .relu2_bwd_##s = PP_T(relu2_bwd, s, PP_ISA),                  \
    .weight_quant_##s = PP_T(weight_quant, s, PP_ISA),            \
    .rope_##s = PP_T(rope, s, PP_ISA),                            \
    .attn_fwd_##s = PP_T(attn_fwd, s, PP_ISA),                    \
    .attn_bwd_##s = PP_T(attn_bwd, s, PP_ISA),                    \
    .cross_entropy_##s = PP_T(cross_entropy, s, PP_ISA),          \
    .adamw_##s = PP_T(adamw, s, PP_ISA),                          \
    .embed_fwd_##s = PP_T(embed_fwd, s, PP_ISA),                  \
    .embed_bwd_##s = PP_T(embed_bwd, s, PP_ISA),

const pp_ops_table PP_TABLE(PP_ISA) = {
    .name = PP_STR(PP_ISA),
    PP_ENTRIES(f32)
    PP_ENTRIES(f64)
};
