//! Builders of batch input/output/error file lines, as `docs/spec/openai-batch.md` describes them.
//!
//! Every `*_line` function returns one NDJSON line without a trailing newline; join lines with
//! [`ndjson`]. Line ids (`batch_req_…`, `req_…`, `chatcmpl-…`) are derived from the custom id,
//! so the same inputs always give the same bytes.

use serde_json::{Value, json};

/// How the model's answer is carried in `response.body.choices[0].message`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnswerShape {
    /// `function_call.arguments` (legacy `functions`), `finish_reason: "function_call"`.
    FunctionCall,
    /// `content` holds the JSON string, `finish_reason: "stop"`.
    Content,
    /// `tool_calls[0].function.arguments`, `finish_reason: "tool_calls"`.
    ToolCalls,
}

/// `IMAGE#{image_id}#RECEIPT#{receipt_id:05}`.
pub fn custom_id(image_id: &str, receipt_id: u32) -> String {
    format!("IMAGE#{image_id}#RECEIPT#{receipt_id:05}")
}

/// The 12-part result id:
/// `IMAGE#…#RECEIPT#00001#LINE#00003#WORD#00001#LABEL#{label}#VALIDATION_STATUS#{status}`.
pub fn result_id(
    image_id: &str,
    receipt_id: u32,
    line_id: u32,
    word_id: u32,
    label: &str,
    status_at_submit: &str,
) -> String {
    format!(
        "IMAGE#{image_id}#RECEIPT#{receipt_id:05}#LINE#{line_id:05}#WORD#{word_id:05}\
         #LABEL#{label}#VALIDATION_STATUS#{status_at_submit}"
    )
}

/// `{"id", "is_valid", "correct_label"?}` (correct_label omitted when `None`).
pub fn result(id: &str, is_valid: bool, correct_label: Option<&str>) -> Value {
    let mut r = json!({"id": id, "is_valid": is_valid});
    if let Some(label) = correct_label {
        r["correct_label"] = json!(label);
    }
    r
}

/// A target of the `### Targets` array: `{"id", "text", "line_id", "proposed_label"}`.
pub fn target(id: &str, text: &str, line_id: u32, proposed_label: &str) -> Value {
    json!({"id": id, "text": text, "line_id": line_id, "proposed_label": proposed_label})
}

/// A second-pass target, which also carries `invalid_labels`.
pub fn target_second_pass(
    id: &str,
    text: &str,
    line_id: u32,
    proposed_label: &str,
    invalid_labels: &[&str],
) -> Value {
    let mut t = target(id, text, line_id, proposed_label);
    t["invalid_labels"] = json!(invalid_labels);
    t
}

/// FNV-1a of the custom id, for stable line ids.
fn stable_suffix(custom_id: &str) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in custom_id.bytes() {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{hash:016x}")
}

/// `{"results": [...]}` as the compact JSON string the model returns.
pub fn results_arguments(results: &[Value]) -> String {
    json!({"results": results}).to_string()
}

/// A completed request whose answer (in `shape`) is `{"results": results}`.
pub fn output_line(custom_id: &str, results: &[Value], shape: AnswerShape) -> String {
    output_line_with_arguments(custom_id, &results_arguments(results), shape)
}

/// Answer in `function_call.arguments`.
pub fn output_line_function_call(custom_id: &str, results: &[Value]) -> String {
    output_line(custom_id, results, AnswerShape::FunctionCall)
}

/// Answer in `content`.
pub fn output_line_content(custom_id: &str, results: &[Value]) -> String {
    output_line(custom_id, results, AnswerShape::Content)
}

/// Answer in `tool_calls[0].function.arguments`.
pub fn output_line_tool_calls(custom_id: &str, results: &[Value]) -> String {
    output_line(custom_id, results, AnswerShape::ToolCalls)
}

/// A completed request whose answer string is `arguments` verbatim (for malformed answers).
pub fn output_line_with_arguments(custom_id: &str, arguments: &str, shape: AnswerShape) -> String {
    let message = match shape {
        AnswerShape::FunctionCall => json!({
            "role": "assistant",
            "content": null,
            "function_call": {"name": "validate_labels", "arguments": arguments},
        }),
        AnswerShape::Content => json!({"role": "assistant", "content": arguments}),
        AnswerShape::ToolCalls => json!({
            "role": "assistant",
            "content": null,
            "tool_calls": [{
                "id": format!("call_{}", stable_suffix(custom_id)),
                "type": "function",
                "function": {"name": "validate_labels", "arguments": arguments},
            }],
        }),
    };
    let finish_reason = match shape {
        AnswerShape::FunctionCall => "function_call",
        AnswerShape::Content => "stop",
        AnswerShape::ToolCalls => "tool_calls",
    };
    output_line_with_choices(
        custom_id,
        &[json!({"index": 0, "message": message, "finish_reason": finish_reason})],
    )
}

/// A completed request with the given `choices` array (e.g. several choices, or odd messages).
pub fn output_line_with_choices(custom_id: &str, choices: &[Value]) -> String {
    let suffix = stable_suffix(custom_id);
    json!({
        "id": format!("batch_req_{suffix}"),
        "custom_id": custom_id,
        "response": {
            "status_code": 200,
            "request_id": format!("req_{suffix}"),
            "body": {
                "id": format!("chatcmpl-{suffix}"),
                "object": "chat.completion",
                "created": 1_700_000_000,
                "model": "gpt-4.1-mini",
                "choices": choices,
                "usage": {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120},
            },
        },
        "error": null,
    })
    .to_string()
}

/// A failed request: `response.status_code` = `status_code` (e.g. 500) with an error body,
/// `error: null`.
pub fn failed_status_line(custom_id: &str, status_code: u16) -> String {
    let suffix = stable_suffix(custom_id);
    json!({
        "id": format!("batch_req_{suffix}"),
        "custom_id": custom_id,
        "response": {
            "status_code": status_code,
            "request_id": format!("req_{suffix}"),
            "body": {"error": {
                "message": "The server had an error while processing your request.",
                "type": "server_error",
                "param": null,
                "code": null,
            }},
        },
        "error": null,
    })
    .to_string()
}

/// A failed request: `response: null`, `error: {code, message}` (codes such as
/// `batch_expired`, `batch_cancelled`, `request_timeout`).
pub fn failed_error_line(custom_id: &str, code: &str, message: &str) -> String {
    json!({
        "id": format!("batch_req_{}", stable_suffix(custom_id)),
        "custom_id": custom_id,
        "response": null,
        "error": {"code": code, "message": message},
    })
    .to_string()
}

/// The system prompt of a request: an intro, then `### Targets`, the targets as a JSON array,
/// a blank line, `### Receipt` and the receipt text.
pub fn prompt(targets: &[Value], receipt_text: &str) -> String {
    let targets = Value::Array(targets.to_vec()).to_string();
    format!(
        "You are validating labels of words on a receipt. For each target, decide whether \
         its proposed label is correct.\n\n### Targets\n{targets}\n\n### Receipt\n{receipt_text}"
    )
}

/// An input-file request line for `/v1/chat/completions` with one system message ([`prompt`])
/// and the legacy `functions` parameter (`validate_labels`).
pub fn input_line(custom_id: &str, targets: &[Value], receipt_text: &str) -> String {
    json!({
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {
            "model": "gpt-4.1-mini",
            "messages": [{"role": "system", "content": prompt(targets, receipt_text)}],
            "functions": [{
                "name": "validate_labels",
                "description": "Report whether each target's proposed label is valid.",
                "parameters": {
                    "type": "object",
                    "properties": {"results": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "properties": {
                                "id": {"type": "string"},
                                "is_valid": {"type": "boolean"},
                                "correct_label": {"type": "string"},
                            },
                            "required": ["id", "is_valid"],
                        },
                    }},
                    "required": ["results"],
                },
            }],
        },
    })
    .to_string()
}

/// Joins lines with `\n` and a trailing newline.
pub fn ndjson<S: AsRef<str>>(lines: &[S]) -> String {
    let mut out = String::new();
    for line in lines {
        out.push_str(line.as_ref());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const IMG: &str = "3f52804b-2fad-4e00-92c8-b593da3a8ed3";

    fn message(line: &str) -> Value {
        let v: Value = serde_json::from_str(line).expect("json");
        v["response"]["body"]["choices"][0]["message"].clone()
    }

    #[test]
    fn output_lines_carry_results_in_each_shape() {
        let cid = custom_id(IMG, 1);
        assert_eq!(cid, format!("IMAGE#{IMG}#RECEIPT#00001"));
        let rid = result_id(IMG, 1, 3, 1, "MERCHANT_NAME", "NONE");
        assert_eq!(rid.split('#').count(), 12);
        let results = vec![
            result(&rid, true, None),
            result(&rid, false, Some("UNIT_PRICE")),
        ];
        let expected = json!({"results": results});

        let fc = output_line_function_call(&cid, &results);
        assert!(!fc.contains('\n'));
        let args = message(&fc)["function_call"]["arguments"]
            .as_str()
            .expect("string")
            .to_owned();
        assert_eq!(
            serde_json::from_str::<Value>(&args).expect("args"),
            expected
        );

        let content = output_line_content(&cid, &results);
        let args = message(&content)["content"].as_str().expect("s").to_owned();
        assert_eq!(
            serde_json::from_str::<Value>(&args).expect("args"),
            expected
        );

        let tools = output_line_tool_calls(&cid, &results);
        let args = message(&tools)["tool_calls"][0]["function"]["arguments"]
            .as_str()
            .expect("s")
            .to_owned();
        assert_eq!(
            serde_json::from_str::<Value>(&args).expect("args"),
            expected
        );

        let v: Value = serde_json::from_str(&fc).expect("json");
        assert_eq!(v["custom_id"], json!(cid));
        assert_eq!(v["response"]["status_code"], json!(200));
        assert_eq!(v["error"], Value::Null);
        assert_eq!(
            fc,
            output_line_function_call(&cid, &results),
            "deterministic"
        );
    }

    #[test]
    fn failed_lines() {
        let cid = custom_id(IMG, 2);
        let v: Value = serde_json::from_str(&failed_status_line(&cid, 500)).expect("json");
        assert_eq!(v["response"]["status_code"], json!(500));
        assert!(v["response"]["body"]["error"]["message"].is_string());
        assert_eq!(v["error"], Value::Null);
        let v: Value = serde_json::from_str(&failed_error_line(&cid, "batch_expired", "expired"))
            .expect("json");
        assert_eq!(v["response"], Value::Null);
        assert_eq!(
            v["error"],
            json!({"code": "batch_expired", "message": "expired"})
        );
    }

    #[test]
    fn input_line_prompt_has_targets_section() {
        let cid = custom_id(IMG, 1);
        let t = vec![
            target(
                &result_id(IMG, 1, 3, 1, "MERCHANT_NAME", "NONE"),
                "ACME",
                3,
                "MERCHANT_NAME",
            ),
            target_second_pass(
                &result_id(IMG, 1, 10, 2, "LINE_TOTAL", "INVALID"),
                "4.99",
                10,
                "LINE_TOTAL",
                &["UNIT_PRICE"],
            ),
        ];
        let line = input_line(&cid, &t, "ACME STORE\nTOTAL 4.99");
        assert!(!line.contains('\n'));
        let v: Value = serde_json::from_str(&line).expect("json");
        assert_eq!(v["custom_id"], json!(cid));
        assert_eq!(v["body"]["functions"][0]["name"], json!("validate_labels"));
        let messages = v["body"]["messages"].as_array().expect("array");
        assert_eq!(messages.len(), 1);
        assert_eq!(messages[0]["role"], json!("system"));
        let content = messages[0]["content"].as_str().expect("string");
        let (_, after) = content
            .split_once("\n### Targets\n")
            .expect("targets header");
        let (array, receipt) = after
            .split_once("\n\n### Receipt\n")
            .expect("receipt header");
        assert_eq!(
            serde_json::from_str::<Value>(array).expect("array"),
            json!(t)
        );
        assert_eq!(receipt, "ACME STORE\nTOTAL 4.99");
        assert_eq!(ndjson(&["a", "b"]), "a\nb\n");
    }
}
