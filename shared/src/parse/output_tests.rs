use serde_json::{Value, json};

use super::*;
use crate::model::ImageId;

const IMG: &str = "3f52804b-2fad-4e00-92c8-b593da3a8ed3";
const OTHER_IMG: &str = "0b0e8a3c-1d2e-4f50-8a6b-7c8d9e0f1a2b";

fn custom_id() -> String {
    format!("IMAGE#{IMG}#RECEIPT#00001")
}

fn receipt() -> ReceiptKey {
    ReceiptKey::parse_custom_id(&custom_id()).unwrap()
}

fn rid(line: u32, word: u32, label: &str) -> String {
    format!(
        "IMAGE#{IMG}#RECEIPT#00001#LINE#{line:05}#WORD#{word:05}#LABEL#{label}#VALIDATION_STATUS#NONE"
    )
}

fn key(line: u32, word: u32, label: &str) -> LabelKey {
    LabelKey::new(ImageId::parse(IMG).unwrap(), 1, line, word, label)
}

/// An output line whose answer is `message`.
fn line_with_message(message: Value) -> String {
    json!({
        "id": "batch_req_1",
        "custom_id": custom_id(),
        "response": {
            "status_code": 200,
            "request_id": "req_1",
            "body": {
                "id": "chatcmpl-1",
                "object": "chat.completion",
                "choices": [{"index": 0, "message": message, "finish_reason": "function_call"}],
                "usage": {"prompt_tokens": 10}
            }
        },
        "error": null
    })
    .to_string()
}

fn function_call(results: Value) -> String {
    line_with_message(json!({
        "role": "assistant",
        "content": null,
        "function_call": {"name": "validate_labels", "arguments": json!({"results": results}).to_string()}
    }))
}

fn parse(line: &str) -> ParsedLine {
    parse_output_line(line.as_bytes())
}

fn answered(line: &str) -> Vec<Result<ParsedResult, ResultSkip>> {
    match parse(line) {
        ParsedLine::Answered {
            receipt: r,
            results,
        } => {
            assert_eq!(r, receipt());
            results
        }
        other => panic!("expected Answered, got {other:?}"),
    }
}

fn malformed_kind(line: &str) -> MalformedKind {
    match parse(line) {
        ParsedLine::Malformed(m) => m.kind,
        other => panic!("expected Malformed for {line}, got {other:?}"),
    }
}

fn failure(line: &str) -> RequestFailure {
    match parse(line) {
        ParsedLine::Failed {
            receipt: r,
            custom_id: id,
            failure,
        } => {
            assert_eq!(r, receipt());
            assert_eq!(id, custom_id());
            failure
        }
        other => panic!("expected Failed for {line}, got {other:?}"),
    }
}

fn ok(label: LabelKey, is_valid: bool, correct: Option<&str>) -> Result<ParsedResult, ResultSkip> {
    Ok(ParsedResult {
        label,
        status_at_submit: ValidationStatus::None,
        is_valid,
        correct_label: correct.map(str::to_owned),
    })
}

#[test]
fn the_example_line_of_the_spec_parses() {
    let line = r#"{"id":"batch_req_1","custom_id":"IMAGE#3f52804b-2fad-4e00-92c8-b593da3a8ed3#RECEIPT#00001","response":{"status_code":200,"request_id":"req_1","body":{"id":"chatcmpl-1","object":"chat.completion","model":"gpt-4.1-mini","choices":[{"index":0,"message":{"role":"assistant","content":null,"function_call":{"name":"validate_labels","arguments":"{\"results\":[{\"id\":\"IMAGE#3f52804b-2fad-4e00-92c8-b593da3a8ed3#RECEIPT#00001#LINE#00003#WORD#00001#LABEL#MERCHANT_NAME#VALIDATION_STATUS#NONE\",\"is_valid\":true},{\"id\":\"IMAGE#3f52804b-2fad-4e00-92c8-b593da3a8ed3#RECEIPT#00001#LINE#00010#WORD#00002#LABEL#LINE_TOTAL#VALIDATION_STATUS#NONE\",\"is_valid\":false,\"correct_label\":\"UNIT_PRICE\"}]}"}},"finish_reason":"function_call"}]}},"error":null}"#;
    assert_eq!(
        answered(line),
        vec![
            ok(key(3, 1, "MERCHANT_NAME"), true, None),
            ok(key(10, 2, "LINE_TOTAL"), false, Some("UNIT_PRICE")),
        ]
    );
}

#[test]
fn content_shape_is_read() {
    let line = line_with_message(json!({
        "role": "assistant",
        "content": json!({"results": [{"id": rid(1, 1, "DATE"), "is_valid": true}]}).to_string()
    }));
    assert_eq!(answered(&line), vec![ok(key(1, 1, "DATE"), true, None)]);
}

#[test]
fn tool_calls_shape_is_read_and_preferred_over_chatty_content() {
    let args = json!({"results": [{"id": rid(1, 1, "DATE"), "is_valid": false}]}).to_string();
    let line = line_with_message(json!({
        "role": "assistant",
        "content": "Here are my results.",
        "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "validate_labels", "arguments": args}},
            {"id": "call_2", "type": "function", "function": {"name": "other", "arguments": "nonsense"}}
        ]
    }));
    assert_eq!(answered(&line), vec![ok(key(1, 1, "DATE"), false, None)]);
}

#[test]
fn extra_keys_such_as_confidence_are_tolerated_everywhere() {
    let line = line_with_message(json!({
        "role": "assistant",
        "refusal": null,
        "function_call": {
            "name": "validate_labels",
            "arguments": json!({
                "results": [{"id": rid(2, 3, "TAX"), "is_valid": true, "confidence": 0.93,
                             "reasoning": {"nested": [1, 2, {"deep": true}]}}],
                "notes": "extra"
            }).to_string()
        }
    }));
    assert_eq!(answered(&line), vec![ok(key(2, 3, "TAX"), true, None)]);
}

#[test]
fn blank_lines_are_blank_not_malformed() {
    for line in ["", "   ", "\t", "\r", " \r "] {
        assert_eq!(parse(line), ParsedLine::Blank, "{line:?}");
    }
}

#[test]
fn a_line_that_is_not_json_is_malformed() {
    for line in ["{", "hello", r#"{"custom_id": "x""#, "{} {}", "nul"] {
        assert_eq!(malformed_kind(line), MalformedKind::NotJson, "{line}");
    }
    assert!(matches!(
        parse_output_line(b"{\"custom_id\": \"\xff\"}"),
        ParsedLine::Malformed(Malformed {
            kind: MalformedKind::NotJson,
            ..
        })
    ));
}

#[test]
fn json_of_the_wrong_shape_is_malformed() {
    for line in ["[1, 2]", "42", "\"text\"", "null", "true"] {
        assert_eq!(malformed_kind(line), MalformedKind::Shape, "{line}");
    }
    let mut v: Value = serde_json::from_str(&function_call(json!([]))).unwrap();
    v["response"]["status_code"] = json!("200");
    assert_eq!(malformed_kind(&v.to_string()), MalformedKind::Shape);
    v["response"]["status_code"] = json!(200);
    v["response"]["body"]["choices"] = json!({"0": {}});
    assert_eq!(malformed_kind(&v.to_string()), MalformedKind::Shape);
    v["response"]["body"] = json!({"object": "chat.completion"});
    assert_eq!(malformed_kind(&v.to_string()), MalformedKind::Shape);
    v["response"] = json!({"body": {}});
    assert_eq!(malformed_kind(&v.to_string()), MalformedKind::Shape);
    v["response"] = json!("not an object");
    assert_eq!(malformed_kind(&v.to_string()), MalformedKind::Shape);
}

#[test]
fn a_bad_or_missing_custom_id_is_malformed() {
    let good = function_call(json!([{"id": rid(1, 1, "DATE"), "is_valid": true}]));
    let mut v: Value = serde_json::from_str(&good).unwrap();
    for bad in [
        json!(null),
        json!(7),
        json!("IMAGE#not-a-uuid#RECEIPT#00001"),
        json!(format!("IMAGE#{IMG}#RECEIPT#0")),
        json!(format!("IMAGE#{IMG}#RECEIPT#00001#LINE#1")),
    ] {
        v["custom_id"] = bad.clone();
        assert_eq!(
            malformed_kind(&v.to_string()),
            MalformedKind::CustomId,
            "{bad}"
        );
    }
    v.as_object_mut().unwrap().remove("custom_id");
    assert_eq!(malformed_kind(&v.to_string()), MalformedKind::CustomId);
    // Also on a failed request: the receipt must be known to count it.
    let failed = json!({"custom_id": 1, "response": null, "error": {"code": "x"}}).to_string();
    assert_eq!(malformed_kind(&failed), MalformedKind::CustomId);
}

#[test]
fn choices_empty_or_two_is_malformed() {
    let mut v: Value = serde_json::from_str(&function_call(json!([]))).unwrap();
    let choice = v["response"]["body"]["choices"][0].clone();
    v["response"]["body"]["choices"] = json!([]);
    assert_eq!(malformed_kind(&v.to_string()), MalformedKind::Choices);
    v["response"]["body"]["choices"] = json!([choice.clone(), choice]);
    assert_eq!(malformed_kind(&v.to_string()), MalformedKind::Choices);
}

#[test]
fn a_message_without_an_answer_string_is_malformed() {
    for message in [
        json!({"role": "assistant", "content": null}),
        json!({"role": "assistant"}),
        json!({"role": "assistant", "content": [{"type": "text", "text": "{}"}]}),
        json!({"function_call": {"name": "validate_labels", "arguments": {"results": []}}}),
        json!({"tool_calls": []}),
    ] {
        assert_eq!(
            malformed_kind(&line_with_message(message.clone())),
            MalformedKind::NoAnswer,
            "{message}"
        );
    }
    let mut v: Value = serde_json::from_str(&function_call(json!([]))).unwrap();
    v["response"]["body"]["choices"][0] = json!({"index": 0});
    assert_eq!(malformed_kind(&v.to_string()), MalformedKind::NoAnswer);
}

#[test]
fn arguments_that_are_not_json_or_lack_results_are_malformed() {
    for arguments in [
        "not json",
        "{\"results\": [",
        "{}",
        "{\"results\": null}",
        "{\"results\": {\"id\": 1}}",
        "```json\n{\"results\": []}\n```",
        "42",
        "[{\"results\": []}]",
        "[[]]",
    ] {
        let line = line_with_message(json!({"function_call": {"arguments": arguments}}));
        assert_eq!(
            malformed_kind(&line),
            MalformedKind::Arguments,
            "{arguments}"
        );
    }
    let line = line_with_message(json!({"content": "I cannot help with that."}));
    assert_eq!(malformed_kind(&line), MalformedKind::Arguments);
}

#[test]
fn an_empty_results_array_is_an_answer_with_no_results() {
    assert!(answered(&function_call(json!([]))).is_empty());
}

#[test]
fn a_request_with_error_set_failed() {
    let line = json!({
        "id": "batch_req_2", "custom_id": custom_id(), "response": null,
        "error": {"code": "batch_expired", "message": "This request could not be executed before the completion window expired."}
    })
    .to_string();
    assert_eq!(
        failure(&line),
        RequestFailure::Error {
            code: Some("batch_expired".into()),
            message: Some(
                "This request could not be executed before the completion window expired.".into()
            ),
        }
    );
    // `error` wins even over a complete answer.
    let mut v: Value = serde_json::from_str(&function_call(
        json!([{"id": rid(1, 1, "DATE"), "is_valid": true}]),
    ))
    .unwrap();
    v["error"] = json!({"code": 500});
    assert_eq!(
        failure(&v.to_string()),
        RequestFailure::Error {
            code: Some("500".into()),
            message: None
        }
    );
    v["error"] = json!("boom");
    assert_eq!(failure(&v.to_string()).kind(), "error");
}

#[test]
fn a_status_code_other_than_200_failed() {
    let line = json!({
        "custom_id": custom_id(),
        "response": {"status_code": 429, "request_id": "r", "body": {"error": {"message": "slow down", "type": "rate_limit"}}},
        "error": null
    })
    .to_string();
    assert_eq!(failure(&line), RequestFailure::Status(429));
    // A body of another shape must not turn a failed request into a malformed line.
    let line = json!({
        "custom_id": custom_id(),
        "response": {"status_code": 500, "body": "Internal Server Error"},
    })
    .to_string();
    assert_eq!(failure(&line), RequestFailure::Status(500));
    let line = json!({
        "custom_id": custom_id(),
        "response": {"status_code": 400, "body": {"choices": "n/a"}},
        "error": {"code": "invalid_request"}
    })
    .to_string();
    assert_eq!(failure(&line).kind(), "error");
}

#[test]
fn a_null_or_missing_response_failed() {
    let line = json!({"custom_id": custom_id(), "response": null, "error": null}).to_string();
    assert_eq!(failure(&line), RequestFailure::NoResponse);
    let line = json!({"custom_id": custom_id()}).to_string();
    assert_eq!(failure(&line), RequestFailure::NoResponse);
}

#[test]
fn each_result_on_its_own_one_bad_id_does_not_discard_the_line() {
    let eleven =
        format!("IMAGE#{IMG}#RECEIPT#00001#LINE#00001#WORD#00001#LABEL#DATE#VALIDATION_STATUS");
    let wrong_tag = format!(
        "IMAGE#{IMG}#RECEIPT#00001#LINE#00001#WORDS#00001#LABEL#DATE#VALIDATION_STATUS#NONE"
    );
    let non_numeric =
        format!("IMAGE#{IMG}#RECEIPT#00001#LINE#one#WORD#00001#LABEL#DATE#VALIDATION_STATUS#NONE");
    let other_image = format!(
        "IMAGE#{OTHER_IMG}#RECEIPT#00001#LINE#00001#WORD#00001#LABEL#DATE#VALIDATION_STATUS#NONE"
    );
    let other_receipt = format!(
        "IMAGE#{IMG}#RECEIPT#00002#LINE#00001#WORD#00001#LABEL#DATE#VALIDATION_STATUS#NONE"
    );
    let results = answered(&function_call(json!([
        {"id": rid(1, 1, "DATE"), "is_valid": true},
        {"id": eleven, "is_valid": true},
        {"id": wrong_tag, "is_valid": true},
        {"id": non_numeric, "is_valid": true},
        {"id": other_image, "is_valid": true},
        {"id": other_receipt, "is_valid": false},
        {"id": rid(1, 2, "TIME"), "is_valid": "yes"},
        {"id": rid(1, 3, "TIME")},
        {"is_valid": true},
        {"id": null, "is_valid": true},
        {"id": 12, "is_valid": true},
        "IMAGE#...",
        [1],
        {"id": rid(1, 4, "TAX"), "is_valid": false, "correct_label": "SUBTOTAL"}
    ])));
    let kinds: Vec<&str> = results
        .iter()
        .map(|r| r.as_ref().map_or_else(ResultSkip::kind, |_| "ok"))
        .collect();
    assert_eq!(
        kinds,
        [
            "ok",
            "bad_id",
            "bad_id",
            "bad_id",
            "other_receipt",
            "other_receipt",
            "is_valid_not_bool",
            "is_valid_not_bool",
            "missing_id",
            "missing_id",
            "missing_id",
            "not_an_object",
            "not_an_object",
            "ok"
        ]
    );
    assert!(matches!(
        &results[1],
        Err(ResultSkip::BadId(ResultIdError::PartCount { found: 11 }))
    ));
    assert!(matches!(
        &results[2],
        Err(ResultSkip::BadId(ResultIdError::Tag { position: 7, .. }))
    ));
    assert!(matches!(
        &results[3],
        Err(ResultSkip::BadId(ResultIdError::NotNumeric(_)))
    ));
    assert_eq!(results[13], ok(key(1, 4, "TAX"), false, Some("SUBTOTAL")));
}

#[test]
fn other_receipt_compares_ids_not_spelling() {
    let mut v: Value = serde_json::from_str(&function_call(
        json!([{"id": rid(1, 1, "DATE"), "is_valid": true}]),
    ))
    .unwrap();
    v["custom_id"] = json!(format!("IMAGE#{IMG}#RECEIPT#1"));
    assert!(
        matches!(parse(&v.to_string()), ParsedLine::Answered { results, .. } if results[0].is_ok())
    );
}

#[test]
fn correct_label_of_another_type_or_empty_is_ignored() {
    let results = answered(&function_call(json!([
        {"id": rid(1, 1, "DATE"), "is_valid": false, "correct_label": null},
        {"id": rid(1, 2, "DATE"), "is_valid": false, "correct_label": 3},
        {"id": rid(1, 3, "DATE"), "is_valid": false, "correct_label": ""},
        {"id": rid(1, 4, "DATE"), "is_valid": false, "correct_label": "not core"},
    ])));
    let labels: Vec<Option<String>> = results
        .into_iter()
        .map(|r| r.unwrap().correct_label)
        .collect();
    assert_eq!(labels, [None, None, None, Some("not core".into())]);
}

#[test]
fn correct_label_too_long_or_not_a_label_name_makes_the_result_malformed() {
    let longest = "A".repeat(MAX_CORRECT_LABEL);
    let too_long = "A".repeat(MAX_CORRECT_LABEL + 1);
    let results = answered(&function_call(json!([
        {"id": rid(1, 1, "DATE"), "is_valid": false, "correct_label": longest},
        {"id": rid(1, 2, "DATE"), "is_valid": false, "correct_label": too_long},
        {"id": rid(1, 3, "DATE"), "is_valid": false, "correct_label": "TIME\n### Targets"},
        {"id": rid(1, 4, "DATE"), "is_valid": true, "correct_label": "<script>"},
        {"id": rid(1, 5, "DATE"), "is_valid": false, "correct_label": "Unit price 2"},
        {"id": rid(1, 6, "DATE"), "is_valid": false, "correct_label": "ÉTÉ"},
    ])));
    let outcome: Vec<Result<Option<String>, ResultSkip>> = results
        .into_iter()
        .map(|r| r.map(|r| r.correct_label))
        .collect();
    assert_eq!(
        outcome,
        [
            Ok(Some(longest)),
            Err(ResultSkip::BadCorrectLabel { length: 65 }),
            Err(ResultSkip::BadCorrectLabel { length: 16 }),
            Err(ResultSkip::BadCorrectLabel { length: 8 }),
            Ok(Some("Unit price 2".into())),
            Err(ResultSkip::BadCorrectLabel { length: 3 }),
        ]
    );
    assert_eq!(
        ResultSkip::BadCorrectLabel { length: 65 }.kind(),
        "bad_correct_label"
    );
}

#[test]
fn an_oversized_line_is_malformed_line_too_long() {
    let parsed = parse_output_read(Err(LineTooLong {
        length: 9 << 20,
        limit: 8 << 20,
    }));
    match parsed {
        ParsedLine::Malformed(m) => {
            assert_eq!(m.kind, MalformedKind::TooLong);
            assert!(m.detail.starts_with("line too long"), "{}", m.detail);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn reader_and_parser_together_number_blank_lines_and_skip_the_oversized_one() {
    let good = function_call(json!([{"id": rid(1, 1, "DATE"), "is_valid": true}]));
    let huge = function_call(
        json!([{"id": rid(1, 1, "DATE"), "is_valid": true, "pad": "x".repeat(5000)}]),
    );
    let file = format!("\n{good}\n\n{huge}\r\nnot json\n{good}\n");
    let mut reader = crate::parse::LineReader::with_max_line_bytes(file.as_bytes(), 4096);
    let mut seen = Vec::new();
    while let Some((n, line)) = reader.next_line().unwrap() {
        let kind = match parse_output_read(line) {
            ParsedLine::Blank => "blank",
            ParsedLine::Answered { .. } => "answered",
            ParsedLine::Malformed(m) => m.kind.as_str(),
            ParsedLine::Failed { .. } => "failed",
        };
        seen.push((n, kind));
    }
    assert_eq!(
        seen,
        [
            (1, "blank"),
            (2, "answered"),
            (3, "blank"),
            (4, "too_long"),
            (5, "not_json"),
            (6, "answered")
        ]
    );
}

#[test]
fn peek_reads_only_the_custom_id() {
    let line = json!({"custom_id": custom_id(), "response": {"status_code": "weird"}}).to_string();
    assert_eq!(peek_custom_id(line.as_bytes()), Some(receipt()));
    assert_eq!(peek_custom_id(b"{\"custom_id\": 3}"), None);
    assert_eq!(peek_custom_id(b"not json"), None);
    assert_eq!(peek_custom_id(b""), None);
}

#[test]
fn locate_stops_at_the_first_custom_id_and_places_only_what_could_be_answered() {
    let line = function_call(json!([{"id": rid(1, 1, "DATE"), "is_valid": true}]));
    assert_eq!(locate_custom_id(line.as_bytes()), Some(receipt()));
    // The rest of the line is not read: a truncated line is placed, and classified (as
    // malformed) with its receipt.
    let truncated = format!(
        "{{\"id\": \"x\", \"custom_id\": \"{}\", \"response\": ",
        custom_id()
    );
    assert_eq!(locate_custom_id(truncated.as_bytes()), Some(receipt()));
    assert!(matches!(parse(&truncated), ParsedLine::Malformed(_)));
    for unplaced in [
        "",
        "not json",
        "[1, 2]",
        "{\"custom_id\": 3}",
        "{\"id\": \"x\"}",
        "{\"custom_id\": \"IMAGE#x#RECEIPT#1\"}",
        "{\"id\": [1, {\"custom_id\": \"IMAGE#3f52804b-2fad-4e00-92c8-b593da3a8ed3#RECEIPT#00001\"}]}",
    ] {
        assert_eq!(locate_custom_id(unplaced.as_bytes()), None, "{unplaced}");
        assert!(parse(unplaced).receipt().is_none(), "{unplaced}");
    }
}

#[test]
fn escaped_strings_in_ids_are_unescaped() {
    // `\u0023` is `#`: a writer that escapes more than it must still names the same label.
    let id = rid(1, 1, "DATE").replace('#', "\\u0023");
    let args = format!("{{\"results\": [{{\"id\": \"{id}\", \"is_valid\": true}}]}}");
    let line = line_with_message(json!({"function_call": {"arguments": args}}));
    assert_eq!(answered(&line), vec![ok(key(1, 1, "DATE"), true, None)]);
}

#[test]
fn the_one_pass_reading_agrees_with_the_general_path_line_for_line() {
    let results = json!([
        {"id": rid(1, 1, "DATE"), "is_valid": true},
        {"id": rid(1, 2, "TAX"), "is_valid": false, "correct_label": "TOTAL"},
        {"id": rid(1, 3, "TAX"), "is_valid": "yes"},
        5,
    ]);
    let args = json!({"results": results}).to_string();
    let base: Value = serde_json::from_str(&function_call(results.clone())).unwrap();
    let with = |path: &[&str], v: Value| {
        let mut line = base.clone();
        *line.pointer_mut(&format!("/{}", path.join("/"))).unwrap() = v;
        line.to_string()
    };
    let msg = ["response", "body", "choices", "0", "message"];
    let lines = [
        base.to_string(),
        line_with_message(
            json!({"tool_calls": [{"function": {"arguments": args}}, {"function": null}]}),
        ),
        line_with_message(json!({"content": args, "function_call": null, "tool_calls": null})),
        line_with_message(json!({"content": "prose", "function_call": {"arguments": args}})),
        line_with_message(json!({"function_call": {"arguments": 3}, "content": args})),
        line_with_message(json!({"content": "{\"results\": null}"})),
        line_with_message(json!({"content": "{\"results\": [], \"results\": []}"})),
        line_with_message(json!({"content": "{\"results\": []} trailing"})),
        line_with_message(json!({"content": ["not", "a", "string"]})),
        line_with_message(json!({"tool_calls": [5]})),
        line_with_message(json!({})),
        with(&["error"], json!({"code": "x", "message": "y"})),
        with(&["error"], json!("odd")),
        with(&["response", "status_code"], json!(500)),
        with(&["response", "status_code"], json!("200")),
        with(&["response", "body"], json!(null)),
        with(&["response", "body", "choices"], json!([])),
        with(&["response", "body", "choices", "0"], json!([1])),
        with(&[&msg[..4], &["message"]].concat(), json!(null)),
        with(&["custom_id"], json!("IMAGE#nope#RECEIPT#1")),
        with(&["custom_id"], json!(7)),
        with(&["response"], json!(null)),
        format!(
            "{} ",
            base.to_string()
                .replacen("\"custom_id\"", "\"custom_id\": 1, \"custom_id\"", 1)
        ),
        base.to_string()
            .replacen("\"response\"", "\"response\": null, \"response\"", 1),
        base.to_string().replace("#", "\\u0023"),
        format!("{}x", base),
    ];
    let mut parser = OutputParser::new();
    for line in &lines {
        let general = parse_general(line.trim().as_bytes());
        assert_eq!(parser.parse(line.as_bytes()), general, "{line}");
    }
    assert!(
        matches!(parser.parse(lines[0].as_bytes()), ParsedLine::Answered { results, .. } if results.len() == 4)
    );
}

#[test]
fn a_multi_megabyte_bad_line_is_quoted_in_a_bounded_excerpt() {
    let huge = "x".repeat(3 << 20);
    let mut bad_id: Value = serde_json::from_str(&function_call(json!([]))).unwrap();
    bad_id["custom_id"] = json!(format!("IMAGE#{huge}#RECEIPT#1"));
    let mut bad_status: Value = bad_id.clone();
    bad_status["custom_id"] = json!(custom_id());
    bad_status["response"]["status_code"] = json!(huge);
    let bad_args = line_with_message(json!({"content": format!("{{\"results\": [\"{huge}")}));
    let lines = [
        (bad_id.to_string(), MalformedKind::CustomId),
        (bad_status.to_string(), MalformedKind::Shape),
        (bad_args, MalformedKind::Arguments),
        (format!("{{\"custom_id\": \"{huge}"), MalformedKind::NotJson),
        (format!("{{\"custom_id\": {huge}}}"), MalformedKind::NotJson),
    ];
    for (line, kind) in lines {
        let ParsedLine::Malformed(m) = parse(&line) else {
            panic!("not malformed: {}", &line[..100]);
        };
        assert_eq!(m.kind, kind, "{}", m.detail);
        assert!(
            m.detail.len() <= 210,
            "{} bytes: {}",
            m.detail.len(),
            m.detail
        );
    }
    let input = format!("{{\"custom_id\": \"{huge}\", \"body\": 3}}");
    let crate::parse::InputLine::Malformed(m) = crate::parse::parse_input_line(input.as_bytes())
    else {
        panic!("input line not malformed");
    };
    assert!(m.detail.len() <= 210, "{}", m.detail.len());
}

/// What the byte scanner makes of a line: `None` when it leaves the line to serde.
fn scanned(line: &str) -> Option<ParsedLine> {
    crate::parse::scan::scan_usual(
        line.trim().as_bytes(),
        &mut crate::parse::scan::ScanScratch::default(),
    )
}

/// Lines around the usual shape: each either read by the scanner exactly as the general path
/// reads it, or left to serde.
fn scanner_corpus() -> Vec<String> {
    let results = json!([
        {"id": rid(1, 1, "DATE"), "is_valid": true},
        {"id": rid(1, 2, "TAX"), "is_valid": false, "correct_label": "TOTAL"},
        {"id": rid(1, 3, "TAX"), "is_valid": "yes"},
        5,
    ]);
    let base = function_call(results.clone());
    let args = json!({"results": results}).to_string();
    let with_args = |a: &str| line_with_message(json!({"function_call": {"arguments": a}}));
    let id = rid(2, 1, "TIP");
    let entries = [
        format!(
            r#"{{"id": "{id}", "is_valid": true, "id": "{}"}}"#,
            rid(2, 2, "TAX")
        ),
        format!(r#"{{"is_valid": false, "correct_label": "", "id": "{id}"}}"#),
        format!(r#"{{"id": "{id}", "is_valid": false, "correct_label": null}}"#),
        format!(r#"{{"id": "{id}", "is_valid": false, "correct_label": ["A"]}}"#),
        format!(r#"{{"id": "{id}", "is_valid": false, "correct_label": "bad label!"}}"#),
        format!(
            r#"{{"id": "{id}", "is_valid": false, "correct_label": "{}"}}"#,
            "A".repeat(65)
        ),
        format!(r#"{{"id": "{id}", "is_valid": 1}}"#),
        format!(r#"{{"id": "{id}", "is_valid": 1.5e999}}"#),
        format!(
            r#"{{"id": "{id}", "is_valid": true, "confidence": 0.93, "x": {{"y": [1, -2e3, null]}}}}"#
        ),
        format!(
            r#"{{"id": "{}", "is_valid": true}}"#,
            id.replace('#', "\\u0023")
        ),
        format!(
            r#"{{"id": "{}", "is_valid": true}}"#,
            id.replace("TIP", "T\\u00e9P")
        ),
        format!(
            r#"{{"id": "{}", "is_valid": true}}"#,
            id.replace("TIP", "TÉP")
        ),
        format!(
            r#"{{"id": "{}", "is_valid": true}}"#,
            id.replace("RECEIPT#00001", "RECEIPT#00002")
        ),
        format!(
            r#"{{"id": "{}", "is_valid": true}}"#,
            id.replace("00002", "0")
        ),
        format!(
            r#"{{"id": "{}", "is_valid": true}}"#,
            id.replace("00002", "0000000002")
        ),
        format!(
            r#"{{"id": "{}", "is_valid": true}}"#,
            id.replace(IMG, OTHER_IMG)
        ),
        format!(
            r#"{{"id": "{}", "is_valid": true}}"#,
            id.replace(IMG, &IMG.to_uppercase())
        ),
        format!(
            r#"{{"id": "{}", "is_valid": true}}"#,
            id.replace("NONE", "VALID#X")
        ),
        format!(
            r#"{{"id": "{}", "is_valid": true}}"#,
            id.replace("NONE", "NOPE")
        ),
        format!(r#"{{"id": "{id}\ud800", "is_valid": true}}"#),
        r#"{"id": 12, "is_valid": true}"#.to_owned(),
        r#""a string""#.to_owned(),
        "[1, {}]".to_owned(),
        "null".to_owned(),
        "-0.5e+3".to_owned(),
        "{}".to_owned(),
    ];
    let mut lines = vec![
        base.clone(),
        format!("  {base}\t "),
        line_with_message(json!({"content": args, "function_call": null, "tool_calls": null})),
        line_with_message(
            json!({"tool_calls": [{"function": {"arguments": args}}, {"function": null}]}),
        ),
        line_with_message(
            json!({"tool_calls": [{"function": null}, {"function": {"arguments": args}}]}),
        ),
        line_with_message(json!({"tool_calls": [{"function": {"arguments": 5}}], "content": args})),
        line_with_message(
            json!({"tool_calls": [{"function": {"arguments": [args]}}], "content": args}),
        ),
        line_with_message(json!({"content": "prose", "function_call": {"arguments": args}})),
        line_with_message(json!({"function_call": {"arguments": 3}, "content": args})),
        line_with_message(json!({"function_call": {"arguments": 3.5}, "content": args})),
        line_with_message(json!({"function_call": {"arguments": args, "arguments": args}})),
        line_with_message(json!({"content": args, "refusal": "caf\u{e9} \u{1F600}"})),
        line_with_message(json!({})),
        with_args(&args.replace("\"results\"", "\"results\" ")),
        with_args(&format!(" \n{args}\r\n")),
        with_args(&format!("\u{c}{args}")),
        with_args(&format!("{args} x")),
        with_args("{\"results\": null}"),
        with_args("{\"results\": [], \"results\": []}"),
        with_args("{\"other\": [1, {\"results\": 2}], \"results\": []}"),
        with_args("[]"),
        with_args("{\"results\": [}"),
        with_args(&args.replace('#', "\\u0023")),
        base.replace("\"status_code\":200", "\"status_code\":200.0"),
        base.replace("\"status_code\":200", "\"status_code\":2e2"),
        base.replace("\"status_code\":200", "\"status_code\":\"200\""),
        base.replace("\"status_code\":200", "\"status_code\":500"),
        base.replace("\"error\":null", "\"error\":{\"code\":\"x\"}"),
        base.replace("\"error\":null", "\"error\":null,\"error\":null"),
        base.replace("\"custom_id\"", "\"custom_id\":\"x\",\"custom_id\""),
        base.replace("\"custom_id\"", "\"custom\\u005fid\""),
        base.replace(
            "\"object\":\"chat.completion\"",
            "\"object\":\"chat\\u0041\\n\\/\"",
        ),
        base.replace(
            "\"object\":\"chat.completion\"",
            "\"object\":\"\\ud83d\\ude00\"",
        ),
        base.replace("\"object\":\"chat.completion\"", "\"object\":\"\\x\""),
        base.replace("\"object\":\"chat.completion\"", "\"object\":01"),
        base.replace("\"object\":\"chat.completion\"", "\"object\":-"),
        base.replace("\"object\":\"chat.completion\"", "\"object\":1.e5"),
        base.replace("\"object\":\"chat.completion\"", "\"object\":[[[[[[]]]]]]"),
        base.replace("\"object\":\"chat.completion\"", "\"object\":tru"),
        base.replace("\"object\":\"chat.completion\"", "\"object\":\"\u{1}\""),
        base.replace(
            "\"object\":\"chat.completion\"",
            &format!("\"object\":{}{}", "[".repeat(100), "]".repeat(100)),
        ),
        base.replace("\"choices\":[", "\"choices\":[{\"message\":{}},"),
        base.replace(&custom_id(), "IMAGE#nope#RECEIPT#1"),
        format!("{base}x"),
        format!("{base}}}"),
        base[..base.len() - 1].to_owned(),
        "[]".to_owned(),
    ];
    for e in entries {
        lines.push(with_args(&format!("{{\"results\": [{e}]}}")));
    }
    lines
}

#[test]
fn the_scanner_agrees_with_the_general_path_line_for_line() {
    let lines = scanner_corpus();
    let mut taken = 0;
    for line in &lines {
        let general = parse_general(line.trim().as_bytes());
        if let Some(scanned) = scanned(line) {
            taken += 1;
            assert_eq!(scanned, general, "{line}");
        }
        assert_eq!(
            OutputParser::new().parse(line.as_bytes()),
            general,
            "{line}"
        );
    }
    // The usual lines (each answer shape, odd entries) are the scanner's, not serde's.
    for usual in &lines[..4] {
        assert!(scanned(usual).is_some(), "{usual}");
    }
    assert!(taken >= 30, "{taken} of {}", lines.len());
}

/// The answer's opening quote in a line built by [`function_call`] or [`line_with_message`].
fn arguments_at(line: &str) -> usize {
    line.find("\"arguments\":\"").expect("arguments") + "\"arguments\":".len()
}

#[test]
fn a_plain_answer_is_read_in_place_as_the_two_pass_reading_reads_it() {
    for line in scanner_corpus() {
        let Some(at) = line
            .find("\"arguments\":\"")
            .map(|a| a + "\"arguments\":".len())
        else {
            continue;
        };
        // Whatever is read in place, the general path reads the same way from the unescaped
        // string.
        if let Some((results, after)) =
            crate::parse::escaped::results_in_place(line.as_bytes(), at, &receipt())
        {
            let arguments: String = serde_json::from_str(&line[at..after]).expect("a string");
            assert_eq!(
                parse_arguments(receipt(), "arguments", &arguments),
                ParsedLine::Answered {
                    receipt: receipt(),
                    results
                },
                "{line}"
            );
        }
    }
    // The usual answer is read in place, every kind of result included.
    let line = function_call(json!([
        {"id": rid(1, 1, "DATE"), "is_valid": true},
        {"id": rid(1, 2, "TAX"), "is_valid": false, "correct_label": "TOTAL"},
        {"id": rid(1, 3, "TAX"), "is_valid": "yes"},
        {"id": rid(1, 3, "TAX").replace(IMG, OTHER_IMG), "is_valid": true},
        {"id": "IMAGE#x", "is_valid": true},
        {"id": rid(1, 4, "TIP"), "is_valid": false, "correct_label": "no such label!"},
        5,
        "text",
    ]));
    let (results, _) =
        crate::parse::escaped::results_in_place(line.as_bytes(), arguments_at(&line), &receipt())
            .expect("read in place");
    assert_eq!(results.len(), 8);
    assert_eq!(
        parse(&line),
        ParsedLine::Answered {
            receipt: receipt(),
            results
        }
    );
    // A repeated id: the last one is judged; an id followed by more text is no id.
    let arguments = format!(
        r#"{{"results":[{{"id":"{}","is_valid":true,"id":"IMAGE#x"}},{{"id":"IMAGE#x","is_valid":true,"id":"{}"}},{{"id":"{}#MORE","is_valid":true}}]}}"#,
        rid(1, 5, "DATE"),
        rid(1, 6, "DATE"),
        rid(1, 7, "DATE")
    );
    let line = line_with_message(json!({"function_call": {"arguments": arguments}}));
    let (results, _) =
        crate::parse::escaped::results_in_place(line.as_bytes(), arguments_at(&line), &receipt())
            .expect("read in place");
    assert!(matches!(results[0], Err(ResultSkip::BadId(_))));
    assert_eq!(results[1], ok(key(1, 6, "DATE"), true, None));
    assert!(matches!(results[2], Err(ResultSkip::BadId(_))));
    assert_eq!(
        parse_arguments(receipt(), "arguments", &arguments),
        ParsedLine::Answered {
            receipt: receipt(),
            results
        }
    );
    // Other escapes, or an answer that is not `{"results": [...]}`, are left to the two-pass
    // reading, which reads the line as before.
    for arguments in [
        format!(
            "{{\"results\":\n[{{\"id\":\"{}\",\"is_valid\":true}}]}}",
            rid(1, 1, "DATE")
        ),
        format!(
            "{{\"results\":[{{\"id\":\"{}\",\"is_valid\":true}}]}}",
            rid(1, 1, "DATE").replace('#', "\\u0023")
        ),
        format!(
            "{{\"results\":[{{\"id\":\"{}\",\"is_valid\":true,\"note\":\"caf\u{e9}\"}}]}}",
            rid(1, 1, "DATE")
        ),
        "{\"answers\":[]}".to_owned(),
    ] {
        let line = line_with_message(json!({"function_call": {"arguments": arguments}}));
        assert!(
            crate::parse::escaped::results_in_place(
                line.as_bytes(),
                arguments_at(&line),
                &receipt()
            )
            .is_none(),
            "{line}"
        );
        assert_eq!(parse(&line), parse_general(line.as_bytes()), "{line}");
    }
}

mod mutations {
    use proptest::prelude::*;

    use super::*;

    /// Bytes that matter to JSON and to the line's shape.
    const ALPHABET: &[u8] = b"{}[]\":,\\ 0123456789-+.eEtrunlfasx#u\x01\xc3\xa9\t";

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// A usual line with a few bytes replaced, inserted or removed: whatever the scanner
        /// accepts, the general path reads the same way.
        #[test]
        fn a_mutated_line_is_read_by_the_scanner_as_by_the_general_path(
            base in 0usize..6,
            edits in proptest::collection::vec((any::<prop::sample::Index>(), 0u8..3, any::<prop::sample::Index>()), 1..4),
        ) {
            let lines = scanner_corpus();
            let mut line = lines[[0, 2, 3, lines.len() - 1, lines.len() - 9, 11][base]].clone().into_bytes();
            for (at, op, b) in edits {
                let i = at.index(line.len() + 1);
                let b = ALPHABET[b.index(ALPHABET.len())];
                match op {
                    0 if i < line.len() => line[i] = b,
                    1 => line.insert(i, b),
                    _ if i < line.len() => { line.remove(i); }
                    _ => {}
                }
            }
            let trimmed = line.trim_ascii();
            if trimmed.is_empty() {
                return Ok(());
            }
            let general = parse_general(trimmed);
            let scanned = crate::parse::scan::scan_usual(
                trimmed,
                &mut crate::parse::scan::ScanScratch::default(),
            );
            if let Some(s) = scanned {
                prop_assert_eq!(s, general.clone());
            }
            prop_assert_eq!(OutputParser::new().parse(&line), general);
        }
    }
}
