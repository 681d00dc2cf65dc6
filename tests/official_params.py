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
