//! Bad pipeline files: each gives a precise error (file:line, field, what is wrong) from the shipped
//! binary, exits 2, and creates no run (no ledger at all).

use std::path::Path;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_tardbot-pipeline");

/// A valid `[pretrain]` section (keys can be appended) after the `[tokenize]` whose shards it reads:
/// the two sequence lengths must agree.
const PRETRAIN: &str =
    "[tokenize]\nseq_len = 64\n[pretrain]\nsteps = 10\nbatch_size = 4\nseq_len = 64\nlr = 0.001\n";

fn base(extra_top: &str, model: &str, sections: &str) -> String {
    format!(
        "workspace = \"work\"\nseed = 1\n{extra_top}\n{model}\n[ingest]\n[[ingest.sources]]\nname = \"tiny\"\npath = \"corpus.txt\"\nformat = \"text\"\nlicense = \"public domain\"\n\n{sections}"
    )
}

fn line_of(text: &str, needle: &str) -> usize {
    text.lines().position(|l| l.contains(needle)).expect(needle) + 1
}

struct Case {
    name: &'static str,
    text: String,
    /// The line that must be named, found by this marker.
    marker: &'static str,
    field: &'static str,
    message: &'static str,
}

fn cases() -> Vec<Case> {
    let model = "[model]\npreset = \"tiny\"\n";
    vec![
        Case {
            name: "unknown top-level key",
            text: base("colour = \"blue\"", model, ""),
            marker: "colour",
            field: "`colour`",
            message: "unknown field",
        },
        Case {
            name: "unknown key in a stage section",
            text: base("", model, &format!("{PRETRAIN}batchsize = 8\n")),
            marker: "batchsize",
            field: "`pretrain.batchsize`",
            message: "unknown field",
        },
        Case {
            name: "wrong type",
            text: base(
                "",
                model,
                &PRETRAIN.replace("batch_size = 4", "batch_size = \"eight\""),
            ),
            marker: "eight",
            field: "`pretrain.batch_size`",
            message: "invalid type",
        },
        Case {
            name: "batch size 0",
            text: base(
                "",
                model,
                &PRETRAIN.replace("batch_size = 4", "batch_size = 0"),
            ),
            marker: "batch_size = 0",
            field: "`pretrain.batch_size`",
            message: "must be at least 1",
        },
        Case {
            name: "preset that does not exist",
            text: base("", "[model]\npreset = \"mac_giant\"\n", ""),
            marker: "mac_giant",
            field: "`model.preset`",
            message: "does not exist",
        },
        Case {
            name: "missing input path",
            text: base("", model, "").replace("corpus.txt", "missing/corpus.txt"),
            marker: "missing/corpus.txt",
            field: "`ingest.sources.0.path`",
            message: "does not exist",
        },
        Case {
            name: "TOML syntax error",
            text: base("seed2 = = 3", model, ""),
            marker: "seed2",
            field: "",
            message: "TOML syntax",
        },
        Case {
            name: "unknown enum value",
            text: base("[execution]\ndevice = \"tpu\"", model, ""),
            marker: "tpu",
            field: "`execution.device`",
            message: "unknown variant",
        },
        Case {
            name: "an unknown precision",
            text: base("[execution]\nprecision = \"fp8\"", model, ""),
            marker: "fp8",
            field: "`execution.precision`",
            message: "unknown variant",
        },
        Case {
            name: "a backend this binary was built without",
            text: base("[execution]\ndevice = \"cuda\"", model, ""),
            marker: "cuda",
            field: "`execution.device`",
            message: "--features cuda",
        },
        Case {
            name: "a setting that moved to [execution]",
            text: base("device = \"cpu\"", model, ""),
            marker: "device",
            field: "`device`",
            message: "moved to `[execution]`",
        },
        Case {
            name: "learning rate out of range",
            text: base("", model, &PRETRAIN.replace("lr = 0.001", "lr = -0.1")),
            marker: "lr = -0.1",
            field: "`pretrain.lr`",
            message: "not a learning rate",
        },
        Case {
            name: "warmup longer than the stage",
            text: base("", model, &format!("{PRETRAIN}warmup_steps = 50\n")),
            marker: "warmup_steps",
            field: "`pretrain.warmup_steps`",
            message: "exceed",
        },
        Case {
            name: "unknown key in a chat stage's own data section",
            text: base(
                "",
                model,
                "[sft]\nsteps = 2\nbatch_size = 2\nseq_len = 64\nlr = 0.001\nwarmup_steps = 0\n[data.sft]\nper_knd = 3\n",
            ),
            marker: "per_knd",
            field: "`data.sft.per_knd`",
            message: "unknown field",
        },
        Case {
            name: "wrong type in a chat stage's training section",
            text: base(
                "",
                model,
                "[cot]\nsteps = \"many\"\nbatch_size = 2\nseq_len = 64\nlr = 0.001\n",
            ),
            marker: "many",
            field: "`cot.steps`",
            message: "invalid type",
        },
        Case {
            name: "a section no stage owns",
            text: base("", model, "[sfft]\nsteps = 3\n"),
            marker: "[sfft]",
            field: "`sfft`",
            message: "not a section of any stage",
        },
        Case {
            name: "execution settings for a stage that does not train",
            text: base("[execution.stages.ingest]\nthreads = 1", model, ""),
            marker: "[execution.stages.ingest]",
            field: "`execution.stages.ingest`",
            message: "not a training stage",
        },
        Case {
            name: "unknown model override",
            text: base(
                "",
                "[model]\npreset = \"tiny\"\n[model.overrides]\nhiden_size = 3\n",
                "",
            ),
            marker: "[model.overrides]",
            field: "`model.overrides`",
            message: "not a model setting",
        },
        Case {
            name: "token shards packed for another sequence length than pretraining",
            text: base(
                "",
                model,
                &PRETRAIN.replacen("seq_len = 64", "seq_len = 999999", 1),
            ),
            // pretrain's own `seq_len = 64` (tokenize's line now reads 999999).
            marker: "seq_len = 64",
            field: "`pretrain.seq_len`",
            message: "64 differs from tokenize.seq_len 999999",
        },
        Case {
            name: "no held-out documents for pretraining",
            text: base("", model, PRETRAIN)
                .replace("[ingest]\n", "[ingest]\nvalidation_fraction = 0.0\n"),
            marker: "validation_fraction",
            field: "`ingest.validation_fraction`",
            message: "validation token shards",
        },
        Case {
            name: "unknown key in the python tool's settings",
            text: base(
                "",
                model,
                &format!("{PRETRAIN}[tools.python]\ntimeout = 3\n"),
            ),
            marker: "timeout = 3",
            field: "`tools.python.timeout`",
            message: "unknown field",
        },
        Case {
            name: "a python sandbox too small to start",
            text: base(
                "",
                model,
                &format!("{PRETRAIN}[tools.python]\nmemory_mib = 8\n"),
            ),
            marker: "memory_mib",
            field: "`tools.python.memory_mib`",
            message: "too little for Python",
        },
    ]
}

fn run(dir: &Path, args: &[&str]) -> (i32, String) {
    let out = Command::new(BIN)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn each_bad_config_gives_file_line_field_and_creates_no_run() {
    for case in cases() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("corpus.txt"), "text\n").unwrap();
        std::fs::write(dir.path().join("pipeline.toml"), &case.text).unwrap();
        let line = line_of(&case.text, case.marker);
        for args in [&["validate"][..], &["run", "all"][..]] {
            let (code, stderr) = run(dir.path(), args);
            assert_eq!(
                code, 2,
                "{}: {args:?} must exit 2; stderr: {stderr}",
                case.name
            );
            let at = format!("pipeline.toml:{line}:");
            let hit = stderr.lines().find(|l| l.contains(&at)).unwrap_or_else(|| {
                panic!(
                    "{}: no problem reported at {at}\n{stderr}\n---\n{}",
                    case.name, case.text
                )
            });
            assert!(
                hit.contains(case.field),
                "{}: field {} not named in `{hit}`",
                case.name,
                case.field
            );
            assert!(
                hit.contains(case.message),
                "{}: `{}` not in `{hit}`",
                case.name,
                case.message
            );
        }
        assert!(
            !dir.path().join("work").exists(),
            "{}: a bad config must not create a workspace or run",
            case.name
        );
    }
}

#[test]
fn every_problem_of_a_file_is_reported_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let text = base(
        "colour = \"blue\"\ndevice = \"tpu\"",
        "[model]\npreset = \"mac_giant\"\n",
        &PRETRAIN.replace("batch_size = 4", "batch_size = 0"),
    )
    .replace("corpus.txt", "absent.txt");
    std::fs::write(dir.path().join("pipeline.toml"), &text).unwrap();
    let (code, stderr) = run(dir.path(), &["validate"]);
    assert_eq!(code, 2);
    for field in [
        "`colour`",
        "`device`",
        "`model.preset`",
        "`pretrain.batch_size`",
        "`ingest.sources.0.path`",
    ] {
        assert!(stderr.contains(field), "{field} missing from:\n{stderr}");
    }
}

#[test]
fn a_valid_config_validates() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("corpus.txt"), "text\n").unwrap();
    std::fs::write(
        dir.path().join("pipeline.toml"),
        base("", "[model]\npreset = \"tiny\"\n", PRETRAIN),
    )
    .unwrap();
    let out = Command::new(BIN)
        .arg("validate")
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
