//! What an ollama TEMPLATE sees. ollama decodes a chat request into `api.Message`/`api.Tool`
//! (dropping what those types do not hold), merges consecutive same-role messages, and runs
//! the template on a `map[string]any` of `System`, `Messages` (`[]*templateMessage`), `Tools`
//! (`templateTools`), `Response`, `Think`, `ThinkLevel` and `IsThinkSet` (template/template.go,
//! ollama 2026-08). This module does the same, as Go values for [`crate::go_template`], and
//! maps the result back to a transformers-style conversation, to render with the jinja
//! template what ollama can still represent.

use std::collections::BTreeMap;

use anyhow::{bail, Context, Result};
use mm_converters::config::deserialize_json;
use serde::{de, Deserialize, Deserializer};
use serde_json::{json, Map, Value as Json};

use crate::go_template::value::{self as gv, Field, GoType, Value, STRING_SLICE};

// ---------------------------------------------------------------------------------------------
// The request, as ollama's api types hold it

#[derive(Debug, Clone, Default)]
pub struct Request {
    pub messages: Vec<Message>,
    pub tools: Option<Vec<Tool>>,
    /// `think`: absent, a bool, or a level string ("high", …).
    pub think: Option<Json>,
}

#[derive(Debug, Clone, Default)]
pub struct Message {
    pub role: String,
    pub content: String,
    pub thinking: String,
    pub tool_calls: Vec<ToolCall>,
    pub tool_name: String,
    pub tool_call_id: String,
}

#[derive(Debug, Clone, Default)]
pub struct ToolCall {
    pub id: String,
    pub index: i64,
    pub name: String,
    /// A JSON object, or `None` when absent.
    pub arguments: Option<Map<String, Json>>,
}

#[derive(Debug, Clone, Default)]
pub struct Tool {
    pub ty: String,
    pub items: Json,
    pub name: String,
    pub description: String,
    pub parameters: Parameters,
}

#[derive(Debug, Clone, Default)]
pub struct Parameters {
    pub ty: String,
    pub defs: Json,
    pub items: Json,
    pub required: Option<Vec<String>>,
    /// `None` when absent (Go: a nil map), in input order.
    pub properties: Option<Vec<(String, Property)>>,
}

#[derive(Debug, Clone, Default)]
pub struct Property {
    pub any_of: Vec<Property>,
    pub ty: Vec<String>,
    pub items: Json,
    pub description: String,
    pub enum_values: Vec<Json>,
    pub properties: Option<Vec<(String, Property)>>,
    pub required: Vec<String>,
}

fn obj<'a>(v: &'a Json, what: &str) -> Result<&'a Map<String, Json>> {
    v.as_object().with_context(|| format!("{what}: expected a JSON object"))
}

// The request body as ollama's Go types decode it (api/types.go): unknown keys are dropped,
// `null` is the zero value, and a value of the wrong type is an error naming its path
// (`messages[1].role: invalid type: integer `5`, expected a string`).

#[derive(Deserialize)]
struct RequestJson {
    messages: Option<Vec<MessageJson>>,
    tools: Option<Vec<ToolJson>>,
    think: Option<Json>,
}

#[derive(Deserialize)]
struct MessageJson {
    role: Option<String>,
    content: Option<String>,
    thinking: Option<String>,
    tool_calls: Option<Vec<ToolCallJson>>,
    tool_name: Option<String>,
    tool_call_id: Option<String>,
}

#[derive(Deserialize)]
struct ToolCallJson {
    id: Option<String>,
    function: Option<ToolCallFunctionJson>,
}

#[derive(Deserialize, Default)]
struct ToolCallFunctionJson {
    index: Option<i64>,
    name: Option<String>,
    arguments: Option<Map<String, Json>>,
}

#[derive(Deserialize)]
struct ToolJson {
    #[serde(rename = "type")]
    ty: Option<String>,
    #[serde(default)]
    items: Json,
    function: Option<ToolFunctionJson>,
}

#[derive(Deserialize, Default)]
struct ToolFunctionJson {
    name: Option<String>,
    description: Option<String>,
    parameters: Option<ParametersJson>,
}

#[derive(Deserialize, Default)]
struct ParametersJson {
    #[serde(rename = "type")]
    ty: Option<String>,
    #[serde(rename = "$defs", default)]
    defs: Json,
    #[serde(default)]
    items: Json,
    required: Option<Vec<String>>,
    properties: Option<PropertiesJson>,
}

#[derive(Deserialize)]
struct PropertyJson {
    #[serde(rename = "anyOf")]
    any_of: Option<Vec<PropertyJson>>,
    #[serde(rename = "type")]
    ty: Option<PropertyTypeJson>,
    #[serde(default)]
    items: Json,
    description: Option<String>,
    #[serde(rename = "enum")]
    enum_values: Option<Vec<Json>>,
    properties: Option<PropertiesJson>,
    required: Option<Vec<String>>,
}

/// ollama's `PropertyType`: one type name or several.
#[derive(Deserialize)]
#[serde(untagged, expecting = "expected a string or an array of strings")]
enum PropertyTypeJson {
    One(String),
    Many(Vec<String>),
}

/// A JSON object of properties, in input order (see [`Parameters::properties`]).
struct PropertiesJson(Vec<(String, Property)>);

impl<'de> Deserialize<'de> for PropertiesJson {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> de::Visitor<'de> for Visit {
            type Value = PropertiesJson;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object of properties")
            }
            fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<PropertiesJson, A::Error> {
                let mut out = Vec::new();
                while let Some((name, p)) = map.next_entry::<String, PropertyJson>()? {
                    out.push((name, p.into()));
                }
                Ok(PropertiesJson(out))
            }
        }
        d.deserialize_map(Visit)
    }
}

impl Request {
    /// Decodes an ollama `/api/chat` request body (`messages`, `tools`, `think`) the way
    /// ollama's Go types do: unknown keys are dropped, wrong types are errors.
    pub fn decode(body: &Json) -> Result<Self> {
        obj(body, "request")?; // (serde would also read a JSON array, field by field)
        let body: RequestJson = deserialize_json(body)?;
        if let Some(t) = body.think.as_ref().filter(|t| !(t.is_boolean() || t.is_string())) {
            bail!("think: expected a bool or a level string, got {t}");
        }
        Ok(Self {
            messages: body.messages.unwrap_or_default().into_iter().map(Message::from).collect(),
            tools: body.tools.map(|t| t.into_iter().map(Tool::from).collect()),
            think: body.think,
        })
    }

    /// ollama's `collate`: consecutive messages of one role (except `tool`) become one, their
    /// contents joined by a blank line; only the first one's other fields survive.
    pub fn collated(&self) -> Vec<Message> {
        let mut out: Vec<Message> = Vec::new();
        for m in &self.messages {
            match out.last_mut() {
                Some(prev) if prev.role == m.role && m.role != "tool" => {
                    prev.content.push_str("\n\n");
                    prev.content.push_str(&m.content);
                }
                _ => out.push(m.clone()),
            }
        }
        out
    }

    pub fn without_thinking(&self) -> Self {
        let mut r = self.clone();
        for m in &mut r.messages {
            m.thinking.clear();
        }
        r
    }

    fn think_flags(&self) -> (bool, String, bool) {
        match &self.think {
            None => (false, String::new(), false),
            Some(Json::Bool(b)) => (*b, String::new(), true),
            Some(Json::String(level)) => (true, level.clone(), true),
            Some(_) => (false, String::new(), true),
        }
    }
}

impl From<MessageJson> for Message {
    fn from(m: MessageJson) -> Self {
        let tool_calls = m.tool_calls.unwrap_or_default().into_iter().map(|tc| {
            let f = tc.function.unwrap_or_default();
            ToolCall {
                id: tc.id.unwrap_or_default(),
                index: f.index.unwrap_or(0),
                name: f.name.unwrap_or_default(),
                arguments: f.arguments,
            }
        });
        Self {
            role: m.role.unwrap_or_default().to_lowercase(),
            content: m.content.unwrap_or_default(),
            thinking: m.thinking.unwrap_or_default(),
            tool_calls: tool_calls.collect(),
            tool_name: m.tool_name.unwrap_or_default(),
            tool_call_id: m.tool_call_id.unwrap_or_default(),
        }
    }
}

impl From<ToolJson> for Tool {
    fn from(t: ToolJson) -> Self {
        let f = t.function.unwrap_or_default();
        let p = f.parameters.unwrap_or_default();
        Self {
            ty: t.ty.unwrap_or_default(),
            items: t.items,
            name: f.name.unwrap_or_default(),
            description: f.description.unwrap_or_default(),
            parameters: Parameters {
                ty: p.ty.unwrap_or_default(),
                defs: p.defs,
                items: p.items,
                required: p.required,
                properties: p.properties.map(|p| p.0),
            },
        }
    }
}

impl From<PropertyJson> for Property {
    fn from(p: PropertyJson) -> Self {
        Self {
            any_of: p.any_of.unwrap_or_default().into_iter().map(Property::from).collect(),
            ty: match p.ty {
                None => Vec::new(),
                Some(PropertyTypeJson::One(name)) => vec![name],
                Some(PropertyTypeJson::Many(names)) => names,
            },
            items: p.items,
            description: p.description.unwrap_or_default(),
            enum_values: p.enum_values.unwrap_or_default(),
            properties: p.properties.map(|p| p.0),
            required: p.required.unwrap_or_default(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The Go types of template/template.go and api/types.go

const fn field(name: &'static str, json: &'static str, omitempty: bool) -> Field {
    Field { name, json: Some(json), omitempty }
}

fn invalid() -> Value {
    Value::Invalid
}

fn stringer_json(v: &Value) -> String {
    gv::marshal_json(v)
}

/// `templateArgs` / `templateProperties`: `String()` is `{}` for a nil map, else JSON.
fn stringer_json_or_empty(v: &Value) -> String {
    match v {
        Value::Map(m) if m.is_nil => "{}".into(),
        other => gv::marshal_json(other),
    }
}

/// The data map ollama executes a template on (`missingkey=zero`: absent keys are nil).
pub static ROOT: GoType =
    GoType { name: "map[string]interface {}", fields: &[], stringer: None, marshal_json: None, elem_zero: invalid };
pub static MESSAGES: GoType =
    GoType { name: "[]*template.templateMessage", fields: &[], stringer: None, marshal_json: None, elem_zero: invalid };
pub static MESSAGE: GoType = GoType {
    name: "template.templateMessage",
    fields: &[
        field("Role", "Role", false),
        field("Content", "Content", false),
        field("Thinking", "Thinking", false),
        field("Images", "Images", false),
        field("ToolCalls", "ToolCalls", false),
        field("ToolName", "ToolName", false),
        field("ToolCallID", "ToolCallID", false),
    ],
    stringer: None,
    marshal_json: None,
    elem_zero: invalid,
};
pub static IMAGES: GoType =
    GoType { name: "[]api.ImageData", fields: &[], stringer: None, marshal_json: None, elem_zero: invalid };
pub static TOOL_CALLS: GoType =
    GoType { name: "[]template.templateToolCall", fields: &[], stringer: None, marshal_json: None, elem_zero: invalid };
pub static TOOL_CALL: GoType = GoType {
    name: "template.templateToolCall",
    fields: &[field("ID", "ID", false), field("Function", "Function", false)],
    stringer: None,
    marshal_json: None,
    elem_zero: invalid,
};
pub static TOOL_CALL_FUNCTION: GoType = GoType {
    name: "template.templateToolCallFunction",
    fields: &[field("Index", "Index", false), field("Name", "Name", false), field("Arguments", "Arguments", false)],
    stringer: None,
    marshal_json: None,
    elem_zero: invalid,
};
pub static ARGS: GoType = GoType {
    name: "template.templateArgs",
    fields: &[],
    stringer: Some(stringer_json_or_empty),
    marshal_json: None,
    elem_zero: invalid,
};
pub static TOOLS: GoType = GoType {
    name: "template.templateTools",
    fields: &[],
    stringer: Some(stringer_json),
    marshal_json: None,
    elem_zero: invalid,
};
pub static TOOL: GoType = GoType {
    name: "template.templateTool",
    fields: &[field("Type", "type", false), field("Items", "items", true), field("Function", "function", false)],
    stringer: Some(stringer_json),
    marshal_json: None,
    elem_zero: invalid,
};
pub static TOOL_FUNCTION: GoType = GoType {
    name: "template.templateToolFunction",
    fields: &[
        field("Name", "name", false),
        field("Description", "description", false),
        field("Parameters", "parameters", false),
    ],
    stringer: None,
    marshal_json: None,
    elem_zero: invalid,
};
pub static TOOL_PARAMETERS: GoType = GoType {
    name: "template.templateToolFunctionParameters",
    fields: &[
        field("Type", "type", false),
        field("Defs", "$defs", true),
        field("Items", "items", true),
        field("Required", "required", true),
        field("Properties", "properties", false),
    ],
    stringer: None,
    marshal_json: None,
    elem_zero: invalid,
};
pub static PROPERTIES: GoType = GoType {
    name: "template.templateProperties",
    fields: &[],
    stringer: Some(stringer_json_or_empty),
    marshal_json: None,
    elem_zero: zero_property,
};
pub static PROPERTY: GoType = GoType {
    name: "api.ToolProperty",
    fields: &[
        field("AnyOf", "anyOf", true),
        field("Type", "type", true),
        field("Items", "items", true),
        field("Description", "description", true),
        field("Enum", "enum", true),
        field("Properties", "properties", true),
        field("Required", "required", true),
    ],
    stringer: None,
    marshal_json: None,
    elem_zero: invalid,
};
pub static PROPERTY_LIST: GoType =
    GoType { name: "[]api.ToolProperty", fields: &[], stringer: None, marshal_json: None, elem_zero: invalid };
pub static PROPERTY_TYPE: GoType = GoType {
    name: "api.PropertyType",
    fields: &[],
    stringer: Some(property_type_string),
    marshal_json: Some(property_type_json),
    elem_zero: invalid,
};
/// `*api.ToolPropertiesMap`: an ordered map behind an unexported field; JSON keeps the order.
pub static ORDERED_PROPERTIES: GoType = GoType {
    name: "api.ToolPropertiesMap",
    fields: &[Field { name: "om", json: None, omitempty: false }],
    stringer: None,
    marshal_json: Some(ordered_properties_json),
    elem_zero: invalid,
};
static ORDERED_ENTRIES: GoType =
    GoType { name: "*orderedmap.Map", fields: &[], stringer: None, marshal_json: None, elem_zero: invalid };

fn zero_property() -> Value {
    property_value(&Property::default())
}

fn property_type_string(v: &Value) -> String {
    let Value::List(l) = v else { return String::new() };
    match l.items.as_slice() {
        [] => String::new(),
        [one] => gv::print(one),
        many => format!("[{}]", many.iter().map(gv::print).collect::<Vec<_>>().join(" ")),
    }
}

fn property_type_json(v: &Value) -> String {
    let Value::List(l) = v else { return "null".into() };
    match l.items.as_slice() {
        [one] => gv::marshal_json(one),
        _ if l.is_nil => "null".into(),
        many => format!("[{}]", many.iter().map(gv::marshal_json).collect::<Vec<_>>().join(",")),
    }
}

fn ordered_properties_json(v: &Value) -> String {
    let Some(Value::List(entries)) = v.field("om") else { return "null".into() };
    let mut out = String::from("{");
    for (i, pair) in entries.items.chunks(2).enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&gv::marshal_json(&pair[0]));
        out.push(':');
        out.push_str(&gv::marshal_json(&pair[1]));
    }
    out.push('}');
    out
}

fn str_value(s: &str) -> Value {
    Value::str(s)
}

fn string_list(items: &[String], nil_when_empty: bool) -> Value {
    if items.is_empty() && nil_when_empty {
        return Value::nil_list(&STRING_SLICE);
    }
    Value::list(&STRING_SLICE, items.iter().map(|s| str_value(s)).collect())
}

fn property_value(p: &Property) -> Value {
    let any_of = if p.any_of.is_empty() {
        Value::nil_list(&PROPERTY_LIST)
    } else {
        Value::list(&PROPERTY_LIST, p.any_of.iter().map(property_value).collect())
    };
    let ty = if p.ty.is_empty() {
        Value::nil_list(&PROPERTY_TYPE)
    } else {
        Value::list(&PROPERTY_TYPE, p.ty.iter().map(|s| str_value(s)).collect())
    };
    let enum_values = if p.enum_values.is_empty() {
        Value::nil_list(&gv::ANY_SLICE)
    } else {
        Value::list(&gv::ANY_SLICE, p.enum_values.iter().map(Value::from_json).collect())
    };
    let properties = match &p.properties {
        None => Value::NilPtr(&ORDERED_PROPERTIES),
        Some(entries) => {
            let flat = entries.iter().flat_map(|(k, v)| [str_value(k), property_value(v)]).collect();
            Value::strukt(&ORDERED_PROPERTIES, vec![Value::list(&ORDERED_ENTRIES, flat)], true)
        }
    };
    Value::strukt(
        &PROPERTY,
        vec![
            any_of,
            ty,
            Value::from_json(&p.items),
            str_value(&p.description),
            enum_values,
            properties,
            string_list(&p.required, true),
        ],
        false,
    )
}

fn tool_value(t: &Tool) -> Value {
    let p = &t.parameters;
    let properties = match &p.properties {
        None => Value::nil_map(&PROPERTIES),
        Some(entries) => {
            Value::map(&PROPERTIES, entries.iter().map(|(k, v)| (k.clone(), property_value(v))).collect())
        }
    };
    let parameters = Value::strukt(
        &TOOL_PARAMETERS,
        vec![
            str_value(&p.ty),
            Value::from_json(&p.defs),
            Value::from_json(&p.items),
            match &p.required {
                Some(r) => string_list(r, false),
                None => Value::nil_list(&STRING_SLICE),
            },
            properties,
        ],
        false,
    );
    let function =
        Value::strukt(&TOOL_FUNCTION, vec![str_value(&t.name), str_value(&t.description), parameters], false);
    Value::strukt(&TOOL, vec![str_value(&t.ty), Value::from_json(&t.items), function], false)
}

fn message_value(m: &Message) -> Value {
    let tool_calls = if m.tool_calls.is_empty() {
        Value::nil_list(&TOOL_CALLS)
    } else {
        Value::list(
            &TOOL_CALLS,
            m.tool_calls
                .iter()
                .map(|tc| {
                    let args = match &tc.arguments {
                        None => Value::nil_map(&ARGS),
                        Some(a) => Value::map(&ARGS, a.iter().map(|(k, v)| (k.clone(), Value::from_json(v))).collect()),
                    };
                    let function = Value::strukt(
                        &TOOL_CALL_FUNCTION,
                        vec![Value::Int(tc.index), str_value(&tc.name), args],
                        false,
                    );
                    Value::strukt(&TOOL_CALL, vec![str_value(&tc.id), function], false)
                })
                .collect(),
        )
    };
    Value::strukt(
        &MESSAGE,
        vec![
            str_value(&m.role),
            str_value(&m.content),
            str_value(&m.thinking),
            Value::nil_list(&IMAGES),
            tool_calls,
            str_value(&m.tool_name),
            str_value(&m.tool_call_id),
        ],
        true,
    )
}

/// The data ollama executes a messages-mode template on.
pub fn template_data(req: &Request) -> Value {
    let collated = req.collated();
    let system: Vec<&str> =
        req.messages.iter().filter(|m| m.role == "system").map(|m| m.content.as_str()).collect();
    let messages = Value::list(&MESSAGES, collated.iter().map(message_value).collect());
    let tools = match &req.tools {
        None => Value::nil_list(&TOOLS),
        Some(t) => Value::list(&TOOLS, t.iter().map(tool_value).collect()),
    };
    let (think, level, is_set) = req.think_flags();
    let mut root = BTreeMap::new();
    root.insert("System".to_string(), Value::str(system.join("\n\n")));
    root.insert("Messages".to_string(), messages);
    root.insert("Tools".to_string(), tools);
    root.insert("Response".to_string(), Value::str(""));
    root.insert("Think".to_string(), Value::Bool(think));
    root.insert("ThinkLevel".to_string(), Value::str(level));
    root.insert("IsThinkSet".to_string(), Value::Bool(is_set));
    Value::map(&ROOT, root)
}

/// Whether a map is the data root (for reporting fields ollama does not provide).
pub fn is_root_type(ty: &GoType) -> bool {
    std::ptr::eq(ty, &ROOT)
}

// ---------------------------------------------------------------------------------------------
// Conversations (transformers style) ↔ ollama requests

/// A conversation as `apply_chat_template` takes it.
#[derive(Debug, Clone)]
pub struct ChatCase {
    pub name: String,
    pub messages: Json,
    pub tools: Option<Json>,
    pub add_generation_prompt: bool,
    /// The thinking switch (`enable_thinking` / `open_thinking`); `None` = not passed.
    pub thinking: Option<bool>,
}

impl ChatCase {
    /// A line of `chat_template_cases*.jsonl` (or of mm's built-in case list).
    pub fn from_json(v: &Json) -> Result<Self> {
        let o = obj(v, "case")?;
        let thinking = ["thinking", "enable_thinking", "open_thinking"]
            .iter()
            .find_map(|k| o.get(*k).and_then(Json::as_bool));
        Ok(Self {
            name: o.get("name").and_then(Json::as_str).unwrap_or("case").to_string(),
            messages: o.get("messages").cloned().context("case without messages")?,
            tools: o.get("tools").filter(|t| !t.is_null()).cloned(),
            add_generation_prompt: o.get("add_generation_prompt").and_then(Json::as_bool).unwrap_or(false),
            thinking,
        })
    }

    pub fn last_role(&self) -> String {
        self.messages
            .as_array()
            .and_then(|m| m.last())
            .and_then(|m| m.get("role"))
            .and_then(Json::as_str)
            .unwrap_or("")
            .to_lowercase()
    }

    /// The same conversation as a client sends it to ollama's `/api/chat`: `reasoning_content`
    /// (or `reasoning`/`thinking`) becomes `thinking`, tool calls carry their arguments as
    /// objects (a JSON string is decoded, as ollama's OpenAI endpoint does), `null` content is
    /// empty, and `enable_thinking`/`open_thinking` becomes `think`.
    pub fn ollama_request(&self) -> Result<Json> {
        let msgs = self.messages.as_array().context("messages must be an array")?;
        let mut out = Vec::new();
        for (i, m) in msgs.iter().enumerate() {
            let mo = obj(m, &format!("messages[{i}]"))?;
            let mut om = Map::new();
            om.insert("role".into(), mo.get("role").cloned().unwrap_or(json!("")));
            let content = match mo.get("content") {
                Some(Json::String(s)) => s.clone(),
                None | Some(Json::Null) => String::new(),
                Some(_) => bail!("messages[{i}]: content blocks are not supported by ollama's text messages"),
            };
            om.insert("content".into(), json!(content));
            if let Some(t) = ["reasoning_content", "reasoning", "thinking"].iter().find_map(|k| mo.get(*k).and_then(Json::as_str)) {
                om.insert("thinking".into(), json!(t));
            }
            if let Some(Json::Array(calls)) = mo.get("tool_calls") {
                let mut oc = Vec::new();
                for (j, tc) in calls.iter().enumerate() {
                    let f = tc.get("function").unwrap_or(tc);
                    let args = match f.get("arguments") {
                        Some(Json::String(s)) => match serde_json::from_str::<Json>(s) {
                            Ok(v @ Json::Object(_)) => v,
                            _ => bail!("messages[{i}].tool_calls[{j}]: arguments {s:?} are not a JSON object, which ollama requires"),
                        },
                        Some(v @ Json::Object(_)) => v.clone(),
                        None | Some(Json::Null) => json!({}),
                        Some(other) => bail!("messages[{i}].tool_calls[{j}]: arguments {other} are not an object"),
                    };
                    let mut call = Map::new();
                    if let Some(id) = tc.get("id").and_then(Json::as_str) {
                        call.insert("id".into(), json!(id));
                    }
                    call.insert("function".into(), json!({"index": j, "name": f.get("name").cloned().unwrap_or(json!("")), "arguments": args}));
                    oc.push(Json::Object(call));
                }
                om.insert("tool_calls".into(), Json::Array(oc));
            }
            if let Some(id) = mo.get("tool_call_id").and_then(Json::as_str) {
                om.insert("tool_call_id".into(), json!(id));
            }
            if let Some(name) = mo.get("name").and_then(Json::as_str) {
                om.insert("tool_name".into(), json!(name));
            }
            out.push(Json::Object(om));
        }
        let mut body = Map::new();
        body.insert("messages".into(), Json::Array(out));
        if let Some(t) = &self.tools {
            body.insert("tools".into(), t.clone());
        }
        if let Some(t) = self.thinking {
            body.insert("think".into(), json!(t));
        }
        Ok(Json::Object(body))
    }
}

/// A number as Go holds it after decoding into `interface{}` (float64), written back as
/// JSON the way Go writes it: integral values without a fraction.
pub(crate) fn go_number(v: &Json) -> Json {
    match v {
        Json::Number(n) => {
            let f = n.as_f64().unwrap_or(0.0);
            if f.fract() == 0.0 && f.abs() < 1e15 {
                json!(f as i64)
            } else {
                json!(f)
            }
        }
        Json::Array(a) => Json::Array(a.iter().map(go_number).collect()),
        Json::Object(o) => {
            let sorted: BTreeMap<&String, Json> = o.iter().map(|(k, v)| (k, go_number(v))).collect();
            Json::Object(sorted.into_iter().map(|(k, v)| (k.clone(), v)).collect())
        }
        other => other.clone(),
    }
}

fn property_json(p: &Property) -> Json {
    let mut o = Map::new();
    if !p.any_of.is_empty() {
        o.insert("anyOf".into(), Json::Array(p.any_of.iter().map(property_json).collect()));
    }
    match p.ty.as_slice() {
        [] => {}
        [one] => {
            o.insert("type".into(), json!(one));
        }
        many => {
            o.insert("type".into(), json!(many));
        }
    }
    if !p.items.is_null() {
        o.insert("items".into(), go_number(&p.items));
    }
    if !p.description.is_empty() {
        o.insert("description".into(), json!(p.description));
    }
    if !p.enum_values.is_empty() {
        o.insert("enum".into(), Json::Array(p.enum_values.iter().map(go_number).collect()));
    }
    if let Some(props) = &p.properties {
        o.insert("properties".into(), Json::Object(props.iter().map(|(k, v)| (k.clone(), property_json(v))).collect()));
    }
    if !p.required.is_empty() {
        o.insert("required".into(), json!(p.required));
    }
    Json::Object(o)
}

impl Request {
    /// The conversation as ollama holds it, written back in transformers' shape: merged
    /// messages, `reasoning_content` from `thinking`, arguments as Go maps (sorted keys, Go
    /// numbers), tool schemas with only the keys ollama's types keep, in the order mm's
    /// TEMPLATEs print them. `(messages, tools)`.
    pub fn to_transformers(&self) -> (Json, Option<Json>) {
        let messages = self
            .collated()
            .iter()
            .map(|m| {
                let mut o = Map::new();
                o.insert("role".into(), json!(m.role));
                o.insert("content".into(), json!(m.content));
                if !m.thinking.is_empty() {
                    o.insert("reasoning_content".into(), json!(m.thinking));
                }
                if !m.tool_calls.is_empty() {
                    let calls: Vec<Json> = m
                        .tool_calls
                        .iter()
                        .map(|tc| {
                            let args = tc.arguments.clone().map(Json::Object).unwrap_or(json!({}));
                            json!({"type": "function", "function": {"name": tc.name, "arguments": go_number(&args)}})
                        })
                        .collect();
                    o.insert("tool_calls".into(), Json::Array(calls));
                }
                Json::Object(o)
            })
            .collect();
        let tools = self.tools.as_ref().map(|tools| {
            Json::Array(
                tools
                    .iter()
                    .map(|t| {
                        let p = &t.parameters;
                        let mut params = Map::new();
                        if !p.ty.is_empty() {
                            params.insert("type".into(), json!(p.ty));
                        }
                        if !p.defs.is_null() {
                            params.insert("$defs".into(), go_number(&p.defs));
                        }
                        if !p.items.is_null() {
                            params.insert("items".into(), go_number(&p.items));
                        }
                        if let Some(props) = &p.properties {
                            let mut sorted: Vec<&(String, Property)> = props.iter().collect();
                            sorted.sort_by(|a, b| a.0.cmp(&b.0));
                            params.insert(
                                "properties".into(),
                                Json::Object(sorted.into_iter().map(|(k, v)| (k.clone(), property_json(v))).collect()),
                            );
                        }
                        if let Some(r) = p.required.as_ref().filter(|r| !r.is_empty()) {
                            params.insert("required".into(), json!(r));
                        }
                        let mut function = Map::new();
                        function.insert("name".into(), json!(t.name));
                        if !t.description.is_empty() {
                            function.insert("description".into(), json!(t.description));
                        }
                        function.insert("parameters".into(), Json::Object(params));
                        json!({"type": t.ty, "function": Json::Object(function)})
                    })
                    .collect(),
            )
        });
        (Json::Array(messages), tools)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_keeps_what_ollama_keeps_and_names_the_path_of_a_wrong_type() {
        let body = json!({
            "model": "dropped",
            "messages": [{"role": "User", "content": "hi", "images": null},
                         {"role": "assistant", "content": null, "tool_calls": [{"function": null}, {"id": "c1",
                          "function": {"index": 1, "name": "f", "arguments": {"b": 1, "a": [2]}}}]}],
            "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object",
                       "required": ["z"], "properties": {"z": {"type": ["string", "null"]}, "a": {"anyOf": [{"type": "integer"}]}}}}}],
            "think": "high"
        });
        let req = Request::decode(&body).unwrap();
        assert_eq!((req.messages[0].role.as_str(), req.messages[1].content.as_str()), ("user", ""));
        let calls = &req.messages[1].tool_calls;
        assert_eq!((calls[0].index, calls[0].arguments.is_none(), calls[1].index, calls[1].id.as_str()), (0, true, 1, "c1"));
        let props = req.tools.as_ref().unwrap()[0].parameters.properties.as_ref().unwrap();
        assert_eq!(props.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(), ["z", "a"]);
        assert_eq!((props[0].1.ty.len(), props[1].1.any_of[0].ty[0].as_str()), (2, "integer"));
        let bad = |pointer: &str, value: Json| {
            let mut b = body.clone();
            *b.pointer_mut(pointer).unwrap() = value;
            format!("{:#}", Request::decode(&b).unwrap_err())
        };
        assert_eq!(bad("/messages/0/role", json!(5)), "messages[0].role: invalid type: integer `5`, expected a string");
        assert_eq!(
            bad("/tools/0/function/parameters/properties/z/type", json!(3)),
            "tools[0].function.parameters.properties.z.type: expected a string or an array of strings"
        );
        assert!(bad("/messages/1/tool_calls/1/function/index", json!(1.5)).starts_with("messages[1].tool_calls[1].function.index: "));
        assert!(bad("/think", json!(1)).starts_with("think: expected a bool or a level string"));
    }
}
