# The DINO recipe for a tiny ResMLP on Fashion-MNIST (28x28, one channel), sourced by
# demo_dino.sh and read by tests/test_dino_learning.py: everything but the data, the
# number of updates, the seed and where the checkpoints go.
#
# DINO's (Caron et al., 2021) settings, with these changes for a 145k-parameter network
# trained for minutes instead of days (measured: README, "Self-supervised DINO"):
#   - teacher momentum 0.95 (DINO: 0.996), still on DINO's cosine to 1: with 0.99 and
#     above the teacher lagged the student by 3 to 7 kNN points after 250-400 updates;
#   - lr 5e-4 at batch 64 with a 30-update warm-up;
#   - a head of 1024 prototypes (DINO: 65536), the arch's;
#   - the last layer frozen for the first 100 updates (DINO: the first epoch);
#   - the two global views only (--local-crops 0): see the README for the measured cost
#     and benefit of local views, which here run at the full resolution.
DINO_FLAGS=(
    --task image_dino --arch resmlp_dino_tiny_28 --criterion dino
    --optimizer timm_adamw --lr 5e-4 --weight-decay 0.04 --lr-scheduler cosine --warmup-updates 30
    --clip-norm 3.0 --batch-size 64
    --momentum-teacher 0.95 --freeze-last-layer-updates 100
    --teacher-temp 0.04 --warmup-teacher-temp 0.04 --local-crops 0
)
