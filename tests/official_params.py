"""Exact parameter counts of the official constructors, from ../shared/design/<family>.md.

Test data, kept apart from the model code so a model change cannot silently move its own expectation.
"""
OFFICIAL_PARAMS = {
    # convit.md section 2 (official constructors; "+" = 64 per head)
    'zoo_convit_tiny': 5_710_512,
    'zoo_convit_tiny_plus': 9_972_912,
    'zoo_convit_small': 27_777_322,
    'zoo_convit_small_plus': 48_979_882,
    'zoo_convit_base': 86_540_040,
    'zoo_convit_base_plus': 153_134_856,
    # dependencyvit.md section 3: no official constructor exists; the counts of the documented (unofficial PR)
    # configuration: 12 heads, no class token, qkv without bias, LayerScale, head selector C*H and message
    # controller C*C/2 + C/2 per block (no biases). Lite adds no parameters.
    'dependencyvit_tiny': 5_964_712,
    'dependencyvit_small': 22_987_624,
    'dependencyvit_lite_tiny': 5_964_712,
    # lsnet.md section 2 (unfused official constructors)
    'lsnet_t': 11_409_832,
    'lsnet_s': 16_146_304,
    'lsnet_b': 23_313_608,
    'lsnet_t_distill': 11_795_600,
    'lsnet_s_distill': 16_596_200,
    'lsnet_b_distill': 23_827_632,
    # mala.md section 2
    'mala_t': 16_449_128,
    'mala_s': 27_142_568,
    'mala_b': 49_792_648,
    'mala_l': 97_766_088,
    # as_vit.md section 2 (deit_256: official VisionTransformerDiffPruning ctor as infer.py builds it, counted here)
    'asvit_deit_tiny': 5_717_419,
    'asvit_deit_small': 22_050_667,
    'asvit_deit_256': 9_982_187,
    'asvit_lvvit_s': 26_151_827,
    'asvit_lvvit_m': 55_830_547,  # official LVViTDiffPruning ctor as infer.py builds lvvit_m, counted here
    # biformer.md section 2 (official constructors)
    'biformer_tiny': 13_142_760,
    'biformer_small': 25_536_232,
    'biformer_base': 56_804_968,
    'biformer_stl': 28_372_552,
    'biformer_stl_nchw': 28_372_552,
    # fmvit.md: no official code, architecture table or counts exist. These are the counts of our reconstruction
    # (training form, with its re-parameterizable branches), frozen here so a model change shows up; the deploy
    # form is sized to the published operating points (MobileOne-S1, ResNet-101), checked in test_fmvit.py.
    'fmvit_t': 7_408_944,
    'fmvit_b': 69_586_504,
    # halonet.md section 2 (timm's constructors, timm/models/byoanet.py) and the paper's H0-H7 as built in
    # backbones/halonet.py (paper: 5.5/8.1/9.4/11.8/19.1/30.7/43.4/67.4 M)
    'zoo_halonet_h0': 5_500_952,
    'zoo_halonet_h1': 8_100_056,
    'zoo_halonet_h2': 9_404_312,
    'zoo_halonet_h3': 11_841_304,
    'zoo_halonet_h4': 19_101_976,
    'zoo_halonet_h5': 30_717_272,
    'zoo_halonet_h6': 43_456_792,
    'zoo_halonet_h7': 67_433_240,
    'zoo_halonet26t': 12_480_288,
    'zoo_sehalonet33ts': 13_691_712,
    'zoo_halonet50ts': 22_733_280,
    'zoo_eca_halonext26ts': 10_756_885,
    'zoo_haloregnetz_b': 11_680_072,
    'zoo_halo2botnet50ts_256': 22_635_360,
    'zoo_lamhalobotnet50ts_256': 22_569_824,
    # karat.md section 3, "our exact count (1000 cls)": no official constructor exists; derived from the nine
    # published totals as timm ViT + (12 x heads | heads) x r N (2G + 3), r = 12, N = 197
    'karat_vit_tiny_g3b': 6_483_352,
    'karat_vit_tiny_g3u': 5_781_244,
    'karat_vit_small_g3b': 23_582_536,
    'karat_vit_small_g3u': 22_178_320,
    'karat_vit_base_g1b': 88_269_736,
    'karat_vit_base_g1u': 86_709_496,
    # litv2.md section 2 (official LITv2 constructor; alpha ablation: LITv2-S with another alpha)
    'litv2_s': 27_844_000,
    'litv2_m': 48_830_368,
    'litv2_b': 86_520_704,
    'litv2_b_384': 86_520_704,
    'litv2_s_alpha0': 28_089_760,
    'litv2_s_alpha02': 27_844_000,
    'litv2_s_alpha04': 27_696_544,
    'litv2_s_alpha05': 27_647_392,
    'litv2_s_alpha07': 27_696_544,
    'litv2_s_alpha1': 28_089_760,
    # overlock.md section 2 (official constructors incl. the aux head; *_reparam = deploy=True)
    'overlock_xt': 17_307_272,
    'overlock_t': 34_990_472,
    'overlock_s': 58_309_772,
    'overlock_b': 98_012_968,
    'overlock_xt_reparam': 16_791_384,
    'overlock_t_reparam': 33_981_064,
    'overlock_s_reparam': 56_670_476,
    'overlock_b_reparam': 95_520_680,
    # van.md section 2
    'van_b0': 4_105_800,
    'van_b1': 13_861_800,
    'van_b2': 26_578_472,
    'van_b3': 44_765_608,
    'van_b4': 60_283_176,
    'van_b5': 89_967_688,
    'van_b6': 199_829_416,
}
