//! Real local tools, used in the generated multi-turn conversations (the assistant calls one, the tool's
//! actual result comes back in a tool-result turn, the assistant answers from it) and available to a
//! chat session that wants to execute the model's calls.
//!
//! - [`LocalTool::Calculator`]: `{"expression": "2*(3+4)"}` → `{"result": 14}`. A hand-written recursive
//!   descent evaluator of `+ - * /`, parentheses, decimals and unary minus/plus; nothing else.
//! - [`LocalTool::UnitConverter`]: `{"value": 100, "from_unit": "cm", "to_unit": "m"}` →
//!   `{"value": 1, "unit": "m"}` within one of length, mass, temperature, volume (fixed table; results
//!   rounded to 7 significant digits).
//! - [`LocalTool::ElementLookup`]: `{"element": "iron"}` (a name or a symbol) →
//!   `{"name": "Iron", "symbol": "Fe", "atomic_number": 26}`.

use crate::schema::ToolSpec;
use serde_json::{Map, Value, json};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LocalTool {
    Calculator,
    UnitConverter,
    ElementLookup,
}

impl LocalTool {
    pub const ALL: [LocalTool; 3] = [
        LocalTool::Calculator,
        LocalTool::UnitConverter,
        LocalTool::ElementLookup,
    ];

    pub fn name(self) -> &'static str {
        match self {
            LocalTool::Calculator => "calculator",
            LocalTool::UnitConverter => "convert_units",
            LocalTool::ElementLookup => "element_lookup",
        }
    }

    /// The tool of that name, if it is a local tool.
    pub fn by_name(name: &str) -> Option<LocalTool> {
        LocalTool::ALL.into_iter().find(|t| t.name() == name)
    }

    /// The tool's JSON schema, in the same dialect as the BFCL tools.
    pub fn spec(self) -> ToolSpec {
        let (description, parameters) = match self {
            LocalTool::Calculator => (
                "Evaluate an arithmetic expression with + - * / and parentheses.",
                json!({"type": "dict", "properties": {
                    "expression": {"type": "string", "description": "The expression, e.g. \"2*(3+4)\"."}
                }, "required": ["expression"]}),
            ),
            LocalTool::UnitConverter => {
                let units: Vec<&str> = UNITS.iter().map(|u| u.symbol).collect();
                (
                    "Convert a quantity between units of length, mass, temperature or volume.",
                    json!({"type": "dict", "properties": {
                        "value": {"type": "float", "description": "The quantity to convert."},
                        "from_unit": {"type": "string", "description": "The unit of the value.", "enum": units},
                        "to_unit": {"type": "string", "description": "The unit to convert to.", "enum": units}
                    }, "required": ["value", "from_unit", "to_unit"]}),
                )
            }
            LocalTool::ElementLookup => (
                "Look up a chemical element by name or symbol: its name, symbol and atomic number.",
                json!({"type": "dict", "properties": {
                    "element": {"type": "string", "description": "The element's name or symbol, e.g. \"iron\" or \"Fe\"."}
                }, "required": ["element"]}),
            ),
        };
        ToolSpec {
            name: self.name().to_string(),
            description: description.to_string(),
            parameters,
        }
    }

    /// Runs the tool. Errors say what is wrong with the arguments (or the expression).
    pub fn call(self, args: &Map<String, Value>) -> Result<Value, String> {
        match self {
            LocalTool::Calculator => {
                let expr = str_arg(args, "expression")?;
                Ok(json!({"result": number_value(evaluate(expr)?, 10)}))
            }
            LocalTool::UnitConverter => {
                let value = args
                    .get("value")
                    .and_then(Value::as_f64)
                    .ok_or_else(|| "argument \"value\" must be a number".to_string())?;
                let from = str_arg(args, "from_unit")?;
                let to = str_arg(args, "to_unit")?;
                let (x, to) = convert(value, from, to)?;
                Ok(json!({"value": number_value(x, 7), "unit": to.symbol}))
            }
            LocalTool::ElementLookup => {
                let q = str_arg(args, "element")?;
                let e = lookup_element(q).ok_or_else(|| {
                    format!("no element named {q:?} in the table (it holds elements 1-30 and a few heavy ones)")
                })?;
                Ok(json!({"name": e.name, "symbol": e.symbol, "atomic_number": e.number}))
            }
        }
    }
}

fn str_arg<'a>(args: &'a Map<String, Value>, key: &str) -> Result<&'a str, String> {
    match args.get(key) {
        Some(Value::String(s)) => Ok(s),
        Some(other) => Err(format!(
            "argument {key:?} must be a string, got {}",
            crate::call::describe_value(other)
        )),
        None => Err(format!("missing argument {key:?}")),
    }
}

/// Rounds to `digits` significant digits (so `0.1+0.2` reads `0.3`).
pub fn round_significant(x: f64, digits: i32) -> f64 {
    if x == 0.0 || !x.is_finite() {
        return x;
    }
    let d = digits - 1 - x.abs().log10().floor() as i32;
    if d >= 0 {
        let s = 10f64.powi(d.min(22));
        (x * s).round() / s
    } else {
        let s = 10f64.powi((-d).min(22));
        (x / s).round() * s
    }
}

/// A number as JSON: an integer when it is one (so `14`, not `14.0`), else rounded to `digits`
/// significant digits.
pub fn number_value(x: f64, digits: i32) -> Value {
    let r = round_significant(x, digits);
    if r.fract() == 0.0 && r.abs() < 9.0e15 {
        Value::from(r as i64)
    } else {
        Value::from(r)
    }
}

/// A number as text the way [`number_value`] writes it (`14`, `1.609344`, `-0.5`).
pub fn format_number(x: f64, digits: i32) -> String {
    number_value(x, digits).to_string()
}

// ---------------------------------------------------------------------------------------------
// Calculator: expr := term (('+'|'-') term)*; term := factor (('*'|'/') factor)*;
// factor := ('-'|'+') factor | number | '(' expr ')'.

const MAX_DEPTH: usize = 200;

/// Evaluates an arithmetic expression. Errors name the problem and the character position.
pub fn evaluate(expr: &str) -> Result<f64, String> {
    let mut p = Parser {
        s: expr.as_bytes(),
        pos: 0,
        depth: 0,
    };
    p.skip_ws();
    if p.pos == p.s.len() {
        return Err("empty expression".to_string());
    }
    let v = p.expr()?;
    p.skip_ws();
    if p.pos < p.s.len() {
        return Err(p.unexpected());
    }
    if !v.is_finite() {
        return Err("the result is not a finite number".to_string());
    }
    Ok(v)
}

struct Parser<'a> {
    s: &'a [u8],
    pos: usize,
    depth: usize,
}

impl Parser<'_> {
    fn skip_ws(&mut self) {
        while self.pos < self.s.len() && self.s[self.pos].is_ascii_whitespace() {
            self.pos += 1;
        }
    }

    fn peek(&mut self) -> Option<u8> {
        self.skip_ws();
        self.s.get(self.pos).copied()
    }

    fn unexpected(&self) -> String {
        match self.s.get(self.pos) {
            None => "unexpected end of the expression".to_string(),
            Some(_) => {
                let rest = String::from_utf8_lossy(&self.s[self.pos..]);
                let c = rest.chars().next().unwrap_or('?');
                format!("unexpected {c:?} at position {}", self.pos + 1)
            }
        }
    }

    fn expr(&mut self) -> Result<f64, String> {
        let mut v = self.term()?;
        while let Some(op @ (b'+' | b'-')) = self.peek() {
            self.pos += 1;
            let r = self.term()?;
            v = if op == b'+' { v + r } else { v - r };
        }
        Ok(v)
    }

    fn term(&mut self) -> Result<f64, String> {
        let mut v = self.factor()?;
        while let Some(op @ (b'*' | b'/')) = self.peek() {
            let at = self.pos + 1;
            self.pos += 1;
            let r = self.factor()?;
            if op == b'*' {
                v *= r;
            } else if r == 0.0 {
                return Err(format!("division by zero (the '/' at position {at})"));
            } else {
                v /= r;
            }
        }
        Ok(v)
    }

    fn factor(&mut self) -> Result<f64, String> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(format!(
                "the expression nests deeper than {MAX_DEPTH} levels"
            ));
        }
        let v = match self.peek() {
            Some(b'-') => {
                self.pos += 1;
                -self.factor()?
            }
            Some(b'+') => {
                self.pos += 1;
                self.factor()?
            }
            Some(b'(') => {
                let open = self.pos + 1;
                self.pos += 1;
                let v = self.expr()?;
                if self.peek() != Some(b')') {
                    return Err(format!(
                        "the '(' at position {open} is not closed ({})",
                        self.unexpected()
                    ));
                }
                self.pos += 1;
                v
            }
            Some(c) if c.is_ascii_digit() || c == b'.' => self.number()?,
            _ => return Err(self.unexpected()),
        };
        self.depth -= 1;
        Ok(v)
    }

    fn number(&mut self) -> Result<f64, String> {
        let start = self.pos;
        while self.pos < self.s.len()
            && (self.s[self.pos].is_ascii_digit() || self.s[self.pos] == b'.')
        {
            self.pos += 1;
        }
        let text = std::str::from_utf8(&self.s[start..self.pos]).unwrap_or("");
        text.parse::<f64>()
            .map_err(|_| format!("bad number {text:?} at position {}", start + 1))
    }
}

// ---------------------------------------------------------------------------------------------
// Unit converter.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dimension {
    Length,
    Mass,
    Temperature,
    Volume,
}

/// A unit: `value_in_base = value * factor + offset` (base units: metre, kilogram, kelvin, litre).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Unit {
    pub symbol: &'static str,
    /// Singular and plural names, as a user would write them.
    pub singular: &'static str,
    pub plural: &'static str,
    pub dimension: Dimension,
    pub factor: f64,
    pub offset: f64,
    /// Other spellings accepted by the converter.
    pub aliases: &'static [&'static str],
}

const fn unit(
    symbol: &'static str,
    singular: &'static str,
    plural: &'static str,
    dimension: Dimension,
    factor: f64,
    aliases: &'static [&'static str],
) -> Unit {
    Unit {
        symbol,
        singular,
        plural,
        dimension,
        factor,
        offset: 0.0,
        aliases,
    }
}

use Dimension::{Length, Mass, Temperature, Volume};

/// The fixed table (exact definitions: inch = 2.54 cm, pound = 0.45359237 kg, US gallon = 3.785411784 l).
pub const UNITS: &[Unit] = &[
    unit(
        "mm",
        "millimeter",
        "millimeters",
        Length,
        0.001,
        &["millimetre", "millimetres"],
    ),
    unit(
        "cm",
        "centimeter",
        "centimeters",
        Length,
        0.01,
        &["centimetre", "centimetres"],
    ),
    unit("m", "meter", "meters", Length, 1.0, &["metre", "metres"]),
    unit(
        "km",
        "kilometer",
        "kilometers",
        Length,
        1000.0,
        &["kilometre", "kilometres"],
    ),
    unit("in", "inch", "inches", Length, 0.0254, &[]),
    unit("ft", "foot", "feet", Length, 0.3048, &[]),
    unit("yd", "yard", "yards", Length, 0.9144, &[]),
    unit("mi", "mile", "miles", Length, 1609.344, &[]),
    unit(
        "mg",
        "milligram",
        "milligrams",
        Mass,
        1e-6,
        &["milligramme"],
    ),
    unit("g", "gram", "grams", Mass, 0.001, &["gramme", "grammes"]),
    unit("kg", "kilogram", "kilograms", Mass, 1.0, &["kilo", "kilos"]),
    unit(
        "t",
        "tonne",
        "tonnes",
        Mass,
        1000.0,
        &["metric ton", "metric tons"],
    ),
    unit("oz", "ounce", "ounces", Mass, 0.028349523125, &[]),
    unit("lb", "pound", "pounds", Mass, 0.45359237, &["lbs"]),
    Unit {
        symbol: "C",
        singular: "degree Celsius",
        plural: "degrees Celsius",
        dimension: Temperature,
        factor: 1.0,
        offset: 273.15,
        aliases: &["celsius", "°c", "centigrade"],
    },
    Unit {
        symbol: "F",
        singular: "degree Fahrenheit",
        plural: "degrees Fahrenheit",
        dimension: Temperature,
        factor: 5.0 / 9.0,
        offset: 273.15 - 32.0 * 5.0 / 9.0,
        aliases: &["fahrenheit", "°f"],
    },
    unit("K", "kelvin", "kelvins", Temperature, 1.0, &[]),
    unit(
        "ml",
        "milliliter",
        "milliliters",
        Volume,
        0.001,
        &["millilitre", "millilitres", "mL"],
    ),
    unit(
        "l",
        "liter",
        "liters",
        Volume,
        1.0,
        &["litre", "litres", "L"],
    ),
    unit(
        "m3",
        "cubic meter",
        "cubic meters",
        Volume,
        1000.0,
        &["cubic metre", "cubic metres"],
    ),
    unit(
        "gal",
        "gallon",
        "gallons",
        Volume,
        3.785411784,
        &["us gallon", "us gallons"],
    ),
    unit("qt", "quart", "quarts", Volume, 0.946352946, &[]),
    unit("pt", "pint", "pints", Volume, 0.473176473, &[]),
    unit("cup", "cup", "cups", Volume, 0.2365882365, &[]),
    unit(
        "fl_oz",
        "fluid ounce",
        "fluid ounces",
        Volume,
        0.0295735295625,
        &["fl oz"],
    ),
];

/// The unit a user means by `name` (symbol, singular, plural or alias; case-insensitive except that
/// a symbol written exactly wins, so `m` is metre and `M`… is not a unit).
pub fn find_unit(name: &str) -> Option<&'static Unit> {
    let n = name.trim();
    UNITS.iter().find(|u| u.symbol == n).or_else(|| {
        let l = n.to_lowercase();
        UNITS.iter().find(|u| {
            u.symbol.to_lowercase() == l
                || u.singular.to_lowercase() == l
                || u.plural.to_lowercase() == l
                || u.aliases.iter().any(|a| a.to_lowercase() == l)
        })
    })
}

/// Converts `value` from one unit to another of the same dimension (unrounded).
pub fn convert(value: f64, from: &str, to: &str) -> Result<(f64, &'static Unit), String> {
    let unknown = |u: &str| {
        let all: Vec<&str> = UNITS.iter().map(|u| u.symbol).collect();
        format!("unknown unit {u:?}; the units are: {}", all.join(", "))
    };
    let f = find_unit(from).ok_or_else(|| unknown(from))?;
    let t = find_unit(to).ok_or_else(|| unknown(to))?;
    if f.dimension != t.dimension {
        return Err(format!(
            "cannot convert {:?} ({:?}) to {:?} ({:?})",
            f.symbol, f.dimension, t.symbol, t.dimension
        ));
    }
    if !value.is_finite() {
        return Err("the value is not a finite number".to_string());
    }
    let base = value * f.factor + f.offset;
    if f.dimension == Temperature && base < -1e-9 {
        return Err(format!("{value} {} is below absolute zero", f.symbol));
    }
    Ok(((base - t.offset) / t.factor, t))
}

// ---------------------------------------------------------------------------------------------
// Element lookup.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Element {
    pub name: &'static str,
    pub symbol: &'static str,
    pub number: u32,
}

const fn el(number: u32, symbol: &'static str, name: &'static str) -> Element {
    Element {
        name,
        symbol,
        number,
    }
}

/// Elements 1–30 and eight well-known heavier ones.
pub const ELEMENTS: &[Element] = &[
    el(1, "H", "Hydrogen"),
    el(2, "He", "Helium"),
    el(3, "Li", "Lithium"),
    el(4, "Be", "Beryllium"),
    el(5, "B", "Boron"),
    el(6, "C", "Carbon"),
    el(7, "N", "Nitrogen"),
    el(8, "O", "Oxygen"),
    el(9, "F", "Fluorine"),
    el(10, "Ne", "Neon"),
    el(11, "Na", "Sodium"),
    el(12, "Mg", "Magnesium"),
    el(13, "Al", "Aluminium"),
    el(14, "Si", "Silicon"),
    el(15, "P", "Phosphorus"),
    el(16, "S", "Sulfur"),
    el(17, "Cl", "Chlorine"),
    el(18, "Ar", "Argon"),
    el(19, "K", "Potassium"),
    el(20, "Ca", "Calcium"),
    el(21, "Sc", "Scandium"),
    el(22, "Ti", "Titanium"),
    el(23, "V", "Vanadium"),
    el(24, "Cr", "Chromium"),
    el(25, "Mn", "Manganese"),
    el(26, "Fe", "Iron"),
    el(27, "Co", "Cobalt"),
    el(28, "Ni", "Nickel"),
    el(29, "Cu", "Copper"),
    el(30, "Zn", "Zinc"),
    el(47, "Ag", "Silver"),
    el(50, "Sn", "Tin"),
    el(53, "I", "Iodine"),
    el(78, "Pt", "Platinum"),
    el(79, "Au", "Gold"),
    el(80, "Hg", "Mercury"),
    el(82, "Pb", "Lead"),
    el(92, "U", "Uranium"),
];

/// An element by name (case-insensitive; `aluminum`, `sulphur` too) or symbol (case-insensitive).
pub fn lookup_element(query: &str) -> Option<&'static Element> {
    let q = query.trim().to_lowercase();
    let q = match q.as_str() {
        "aluminum" => "aluminium".to_string(),
        "sulphur" => "sulfur".to_string(),
        _ => q,
    };
    ELEMENTS
        .iter()
        .find(|e| e.name.to_lowercase() == q)
        .or_else(|| ELEMENTS.iter().find(|e| e.symbol.to_lowercase() == q))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn calculator_evaluates() {
        for (e, want) in [
            ("2*(3+4)", 14.0),
            ("1 + 2 * 3", 7.0),
            ("(1 + 2) * 3", 9.0),
            ("10 / 4", 2.5),
            ("-3 + 5", 2.0),
            ("-(2 + 3) * -2", 10.0),
            ("2 - -2", 4.0),
            ("8 / 2 / 2", 2.0),
            ("10 - 4 - 3", 3.0),
            ("1.5 * 4", 6.0),
            (".5 + +1", 1.5),
            ("  ( ( 7 ) )  ", 7.0),
        ] {
            assert_eq!(evaluate(e), Ok(want), "{e}");
        }
        let r = LocalTool::Calculator
            .call(&args(json!({"expression": "2*(3+4)"})))
            .unwrap();
        assert_eq!(r, json!({"result": 14}));
        assert_eq!(r.to_string(), r#"{"result":14}"#);
        let r = LocalTool::Calculator
            .call(&args(json!({"expression": "0.1 + 0.2"})))
            .unwrap();
        assert_eq!(r, json!({"result": 0.3}));
        let r = LocalTool::Calculator
            .call(&args(json!({"expression": "1/3"})))
            .unwrap();
        assert_eq!(r, json!({"result": 0.3333333333}));
    }

    #[test]
    fn calculator_refuses_bad_input() {
        assert_eq!(evaluate(""), Err("empty expression".to_string()));
        assert!(evaluate("1 / 0").unwrap_err().contains("division by zero"));
        assert!(evaluate("2 * (3 + 4").unwrap_err().contains("not closed"));
        assert!(
            evaluate("2 +")
                .unwrap_err()
                .contains("end of the expression")
        );
        assert!(
            evaluate("2 ^ 3")
                .unwrap_err()
                .contains("unexpected '^' at position 3")
        );
        assert!(
            evaluate("import os")
                .unwrap_err()
                .contains("unexpected 'i'")
        );
        assert!(evaluate("1.2.3").unwrap_err().contains("bad number"));
        assert!(evaluate("3 4").is_err());
        assert!(
            evaluate(&"(".repeat(10_000))
                .unwrap_err()
                .contains("nests deeper")
        );
        assert!(evaluate(&"-".repeat(10_000)).is_err());
        assert!(
            LocalTool::Calculator
                .call(&args(json!({"expr": "1"})))
                .is_err()
        );
        assert!(
            LocalTool::Calculator
                .call(&args(json!({"expression": 3})))
                .unwrap_err()
                .contains("must be a string")
        );
    }

    #[test]
    fn units_convert() {
        let c = |v: f64, f: &str, t: &str| {
            LocalTool::UnitConverter
                .call(&args(json!({"value": v, "from_unit": f, "to_unit": t})))
                .unwrap()
        };
        assert_eq!(c(100.0, "cm", "m"), json!({"value": 1, "unit": "m"}));
        assert_eq!(c(212.0, "F", "C"), json!({"value": 100, "unit": "C"}));
        assert_eq!(c(0.0, "C", "K"), json!({"value": 273.15, "unit": "K"}));
        assert_eq!(
            c(-40.0, "celsius", "fahrenheit"),
            json!({"value": -40, "unit": "F"})
        );
        assert_eq!(
            c(1.0, "mile", "km"),
            json!({"value": 1.609344, "unit": "km"})
        );
        assert_eq!(c(1.0, "kg", "lb"), json!({"value": 2.204623, "unit": "lb"}));
        assert_eq!(c(2.0, "gal", "l"), json!({"value": 7.570824, "unit": "l"}));
        assert_eq!(c(1.0, "ft", "in"), json!({"value": 12, "unit": "in"}));
        assert_eq!(
            c(3.5, "Kilometres", "m"),
            json!({"value": 3500, "unit": "m"})
        );
        assert_eq!(c(1.0, "mg", "t"), json!({"value": 1e-9, "unit": "t"}));
        let bad = |v: Value| LocalTool::UnitConverter.call(&args(v)).unwrap_err();
        assert!(
            bad(json!({"value": 1, "from_unit": "kg", "to_unit": "m"})).contains("cannot convert")
        );
        assert!(
            bad(json!({"value": 1, "from_unit": "parsec", "to_unit": "m"}))
                .contains("unknown unit")
        );
        assert!(
            bad(json!({"value": -500, "from_unit": "C", "to_unit": "K"})).contains("absolute zero")
        );
        assert!(bad(json!({"value": "1", "from_unit": "m", "to_unit": "cm"})).contains("number"));
        // The schema's enum is exactly the table's symbols, and every symbol resolves to itself.
        for u in UNITS {
            assert_eq!(find_unit(u.symbol), Some(u));
            assert_eq!(find_unit(u.plural), Some(u), "{}", u.plural);
        }
    }

    #[test]
    fn elements_look_up() {
        let l = |q: &str| LocalTool::ElementLookup.call(&args(json!({"element": q})));
        assert_eq!(
            l("iron").unwrap(),
            json!({"name": "Iron", "symbol": "Fe", "atomic_number": 26})
        );
        assert_eq!(l("AU").unwrap()["name"], json!("Gold"));
        assert_eq!(l("aluminum").unwrap()["atomic_number"], json!(13));
        assert!(l("unobtainium").unwrap_err().contains("no element"));
        assert!(ELEMENTS.len() >= 30);
        let mut numbers: Vec<u32> = ELEMENTS.iter().map(|e| e.number).collect();
        numbers.dedup();
        assert_eq!(numbers.len(), ELEMENTS.len());
    }

    #[test]
    fn specs_are_well_formed() {
        for t in LocalTool::ALL {
            let s = t.spec();
            assert_eq!(LocalTool::by_name(&s.name), Some(t));
            assert!(s.parameters["required"].is_array());
        }
        assert_eq!(LocalTool::by_name("nope"), None);
        assert_eq!(format_number(14.0, 6), "14");
        assert_eq!(format_number(2.5, 6), "2.5");
        assert_eq!(round_significant(123456789.0, 3), 123000000.0);
    }
}
