"""Parameter counts the tests hold every registered model to, in four tables by where each number comes from.

Test data, kept apart from the model code so a model change cannot silently move its own expectation. Every model
is in exactly one of the three exact tables; the published table adds the papers' rounded figures where a model has
no official constructor to count.

- OFFICIAL_PARAMS: counted on the official constructors (for HaloNet, which has no official code: timm's
  constructors, the reference implementation that carries the trained weights). Exact.
- DERIVED_PARAMS: no constructor exists; computed from the paper's published structure and totals (the derivation
  is in docs/<family>.md). Exact for our construction, and checked against PUBLISHED_PARAMS.
- SELF_MADE_PARAMS: reconstructions with nothing published to compare with (docs/fmvit.md, docs/dependencyvit.md).
  Regression values: our own counts, frozen so that a change shows up. They prove nothing about the papers.
- PUBLISHED_PARAMS: the papers' tables in millions as printed; a count matches when it is within one unit of the last
  printed digit (the tables round or truncate).
"""
OFFICIAL_PARAMS = {
    # ConViT (official constructors; "+" = the same constructors with 64 channels per head)
    'zoo_convit_tiny': 5_710_512,
    'zoo_convit_tiny_plus': 9_972_912,
    'zoo_convit_small': 27_777_322,
    'zoo_convit_small_plus': 48_979_882,
    'zoo_convit_base': 86_540_040,
    'zoo_convit_base_plus': 153_134_856,
    # LSNet (unfused official constructors)
    'lsnet_t': 11_409_832,
    'lsnet_s': 16_146_304,
    'lsnet_b': 23_313_608,
    'lsnet_t_distill': 11_795_600,
    'lsnet_s_distill': 16_596_200,
    'lsnet_b_distill': 23_827_632,
    # MAViT (MALA_T/S/B/L)
    'mala_t': 16_449_128,
    'mala_s': 27_142_568,
    'mala_b': 49_792_648,
    'mala_l': 97_766_088,
    # AS-ViT (VisionTransformerDiffPruning / LVViTDiffPruning as the official infer.py builds them)
    'asvit_deit_tiny': 5_717_419,
    'asvit_deit_small': 22_050_667,
    'asvit_deit_256': 9_982_187,
    'asvit_lvvit_s': 26_151_827,
    'asvit_lvvit_m': 55_830_547,
    # BiFormer (official constructors)
    'biformer_tiny': 13_142_760,
    'biformer_small': 25_536_232,
    'biformer_base': 56_804_968,
    'biformer_stl': 28_372_552,
    'biformer_stl_nchw': 28_372_552,
    # HaloNet: timm's constructors (timm/models/byoanet.py); H1 is timm's halonet_h1
    'zoo_halonet_h1': 8_100_056,
    'zoo_halonet26t': 12_480_288,
    'zoo_sehalonet33ts': 13_691_712,
    'zoo_halonet50ts': 22_733_280,
    'zoo_eca_halonext26ts': 10_756_885,
    'zoo_haloregnetz_b': 11_680_072,
    'zoo_halo2botnet50ts_256': 22_635_360,
    'zoo_lamhalobotnet50ts_256': 22_569_824,
    # LITv2 (official constructor; the alpha ablation is LITv2-S with another alpha)
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
    # OverLoCK (official constructors incl. the aux head; *_reparam = deploy=True)
    'overlock_xt': 17_307_272,
    'overlock_t': 34_990_472,
    'overlock_s': 58_309_772,
    'overlock_b': 98_012_968,
    'overlock_xt_reparam': 16_791_384,
    'overlock_t_reparam': 33_981_064,
    'overlock_s_reparam': 56_670_476,
    'overlock_b_reparam': 95_520_680,
    # VAN (official constructors, b4-b6 included: they exist without released weights)
    'van_b0': 4_105_800,
    'van_b1': 13_861_800,
    'van_b2': 26_578_472,
    'van_b3': 44_765_608,
    'van_b4': 60_283_176,
    'van_b5': 89_967_688,
    'van_b6': 199_829_416,
}

DERIVED_PARAMS = {
    # HaloNet H0, H2-H7: the paper's table read as docs/halonet.md explains (values widened by rv, queries and keys
    # not); timm builds only H1
    'zoo_halonet_h0': 5_500_952,
    'zoo_halonet_h2': 9_404_312,
    'zoo_halonet_h3': 11_841_304,
    'zoo_halonet_h4': 19_101_976,
    'zoo_halonet_h5': 30_717_272,
    'zoo_halonet_h6': 43_456_792,
    'zoo_halonet_h7': 67_433_240,
    # KArAt: timm's ViT + (12 x heads | heads) x r N (2G + 3) with r = 12, N = 197 (docs/karat.md), 1000 classes
    'karat_vit_tiny_g3b': 6_483_352,
    'karat_vit_tiny_g3u': 5_781_244,
    'karat_vit_small_g3b': 23_582_536,
    'karat_vit_small_g3u': 22_178_320,
    'karat_vit_base_g1b': 88_269_736,
    'karat_vit_base_g1u': 86_709_496,
}

SELF_MADE_PARAMS = {
    # DependencyViT: no official code or published counts; our configuration (docs/dependencyvit.md): 12 heads, no
    # class token, qkv without bias, LayerScale, head selector C*H and message controller C*C/2 + C/2 per block.
    # Lite adds no parameters.
    'dependencyvit_tiny': 5_964_712,
    'dependencyvit_small': 22_987_624,
    'dependencyvit_lite_tiny': 5_964_712,
    # FMViT: a reconstruction from the abstract (docs/fmvit.md), training form with its re-parameterizable branches.
    # The deploy form's sizing against MobileOne-S1 / ResNet-101 is checked in test_fmvit.py.
    'fmvit_t': 7_408_944,
    'fmvit_b': 69_586_504,
}

# model -> (published millions as printed, constructor kwargs the published figure was counted with)
PUBLISHED_PARAMS = {
    # HaloNet paper table, H0-H7 (H6: ours 43.457 M against 43.4: the table truncates or counts slightly differently)
    'zoo_halonet_h0': (5.5, {}),
    'zoo_halonet_h1': (8.1, {}),
    'zoo_halonet_h2': (9.4, {}),
    'zoo_halonet_h3': (11.8, {}),
    'zoo_halonet_h4': (19.1, {}),
    'zoo_halonet_h5': (30.7, {}),
    'zoo_halonet_h6': (43.4, {}),
    'zoo_halonet_h7': (67.4, {}),
    # KArAt paper table: Tiny and Base were counted with a 10-class head, Small with 1000 classes
    'karat_vit_tiny_g3b': (6.29, dict(num_classes=10)),
    'karat_vit_tiny_g3u': (5.59, dict(num_classes=10)),
    'karat_vit_small_g3b': (23.58, {}),
    'karat_vit_small_g3u': (22.18, {}),
    'karat_vit_base_g1b': (87.51, dict(num_classes=10)),
    'karat_vit_base_g1u': (85.95, dict(num_classes=10)),
    # OverLoCK paper: the deploy models without the auxiliary head
    'overlock_xt_reparam': (16, dict(deep_supervision=False)),
    'overlock_t_reparam': (33, dict(deep_supervision=False)),
    'overlock_s_reparam': (56, dict(deep_supervision=False)),
    'overlock_b_reparam': (95, dict(deep_supervision=False)),
}
