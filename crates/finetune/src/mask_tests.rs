//! The loss mask of the chat template reaches the trainer: targets on system, user and tool-result
//! tokens contribute nothing (loss and every gradient unchanged, bit for bit, when they change), and
//! targets on assistant tokens do.

use candle_core::Tensor;
use tardbot_core::ModelConfig;
use tardbot_core::config::{Execution, TrainConfig};
use tardbot_model::named_vars;
use tardbot_tokens::chat::{Conversation, Message, Piece, Role, ToolCall, chat_template};
use tardbot_tokens::loader::Batch;
use tardbot_train::{TokenBatch, Trainer, batch_tensors};

const VOCAB: usize = 64;

/// The template's pieces as ids (special ids, then text bytes folded into the vocabulary) and mask.
fn render(conv: &Conversation) -> (Vec<u32>, Vec<u8>) {
    let (mut ids, mut mask) = (Vec::new(), Vec::new());
    for (piece, loss) in chat_template(conv, false).unwrap() {
        match piece {
            Piece::Special(s) => ids.push(s.id()),
            Piece::Text(t) => ids.extend(t.bytes().map(|b| 16 + (b as u32) % (VOCAB as u32 - 16))),
        }
        mask.resize(ids.len(), loss as u8);
    }
    (ids, mask)
}

fn conversation() -> Conversation {
    let mut call = Message::new(Role::Assistant, "");
    call.tool_calls.push(ToolCall {
        name: "add".into(),
        arguments: serde_json::json!({"a": 2, "b": 3}),
    });
    Conversation {
        messages: vec![
            Message::new(Role::System, "You can call add."),
            Message::new(Role::User, "What is 2 plus 3?"),
            call,
            Message::new(Role::Tool, "{\"result\": 5}"),
            Message::new(Role::Assistant, "It is 5."),
        ],
    }
}

fn with_targets(b: &TokenBatch, targets: Vec<u32>) -> TokenBatch {
    let n = targets.len();
    TokenBatch {
        inputs: b.inputs.clone(),
        targets: Tensor::from_vec(targets, (1, n), &candle_core::Device::Cpu).unwrap(),
        doc_ids: b.doc_ids.clone(),
        loss_mask: b.loss_mask.clone(),
        tokens: b.tokens,
    }
}

#[test]
fn no_gradient_flows_from_prompt_or_tool_result_tokens() {
    let (ids, mask) = render(&conversation());
    let n = ids.len();
    assert!(mask.contains(&0) && mask.contains(&1));
    let batch = batch_tensors(&Batch {
        batch_size: 1,
        window: n,
        tokens: ids.clone(),
        doc_ids: vec![0; n],
        positions: (0..n as u32).collect(),
        loss_mask: mask.clone(),
        epoch: 0,
        step: 0,
    })
    .unwrap();
    let mut cfg = ModelConfig::from_preset("micro").unwrap();
    cfg.vocab_size = VOCAB;
    let trainer = Trainer::new(
        &cfg,
        &TrainConfig::finetune_default(),
        &Execution::cpu(),
        7,
        None,
    )
    .unwrap();
    let targets: Vec<u32> = ids[1..].to_vec();

    // Every target whose mask is 0 (system, user, tool-result tokens and turn openers) replaced.
    let mut prompt_changed = targets.clone();
    let mut changed = 0;
    for (i, t) in prompt_changed.iter_mut().enumerate() {
        if mask[i + 1] == 0 {
            *t = (*t + 1) % VOCAB as u32;
            changed += 1;
        }
    }
    assert!(changed > 20, "the prompt has {changed} masked targets");
    let (g0, r0) = trainer.gradients(std::slice::from_ref(&batch)).unwrap();
    let (g1, r1) = trainer
        .gradients(&[with_targets(&batch, prompt_changed)])
        .unwrap();
    assert_eq!(
        r0.ce.to_bits(),
        r1.ce.to_bits(),
        "loss depends on masked targets"
    );
    let (g0, g1) = (g0.unwrap(), g1.unwrap());
    let mut compared = 0;
    for (name, v) in named_vars(&trainer.varmap) {
        if let (Some(a), Some(b)) = (g0.get(v.as_tensor()), g1.get(v.as_tensor())) {
            let (a, b) = (
                a.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                b.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            );
            assert!(
                a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()),
                "{name}: gradient depends on masked targets"
            );
            compared += 1;
        }
    }
    assert!(compared > 10, "only {compared} gradients compared");

    // One assistant target replaced: the loss changes (the mask is not all zeros in effect).
    let mut answer_changed = targets;
    let i = (0..answer_changed.len())
        .rev()
        .find(|&i| mask[i + 1] == 1)
        .unwrap();
    answer_changed[i] = (answer_changed[i] + 1) % VOCAB as u32;
    let (_, r2) = trainer
        .gradients(&[with_targets(&batch, answer_changed)])
        .unwrap();
    assert_ne!(r0.ce.to_bits(), r2.ce.to_bits());
}
