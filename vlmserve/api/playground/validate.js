// A small JSON Schema checker for the playground's JSON mode: the keywords that structured-output
// schemas use (type, enum, const, properties, required, additionalProperties, items, prefixItems,
// min/max for numbers, strings and arrays, pattern, anyOf/oneOf/allOf, local $ref to $defs).
// Returns a list of "path: problem" strings; empty means valid.

const TYPES = {
  object: (v) => v !== null && typeof v === "object" && !Array.isArray(v),
  array: Array.isArray,
  string: (v) => typeof v === "string",
  number: (v) => typeof v === "number" && Number.isFinite(v),
  integer: Number.isInteger,
  boolean: (v) => typeof v === "boolean",
  null: (v) => v === null,
};

function same(a, b) {
  return JSON.stringify(a) === JSON.stringify(b);
}

function resolve(schema, root) {
  if (schema && typeof schema.$ref === "string" && schema.$ref.startsWith("#/")) {
    let node = root;
    for (const key of schema.$ref.slice(2).split("/")) node = node?.[key.replace(/~1/g, "/").replace(/~0/g, "~")];
    return node ?? {};
  }
  return schema;
}

function check(value, raw, root, path, errors) {
  const schema = resolve(raw, root);
  if (schema === true || schema === undefined || schema === null) return;
  if (schema === false) { errors.push(`${path}: no value is allowed here`); return; }
  const at = path || "(root)";
  if (schema.type !== undefined) {
    const types = Array.isArray(schema.type) ? schema.type : [schema.type];
    if (!types.some((t) => TYPES[t]?.(value))) {
      errors.push(`${at}: expected ${types.join(" or ")}, got ${value === null ? "null" : Array.isArray(value) ? "array" : typeof value}`);
      return;
    }
  }
  if (schema.enum && !schema.enum.some((e) => same(e, value))) errors.push(`${at}: must be one of ${JSON.stringify(schema.enum)}`);
  if ("const" in schema && !same(schema.const, value)) errors.push(`${at}: must be ${JSON.stringify(schema.const)}`);
  if (typeof value === "number") {
    if (schema.minimum !== undefined && value < schema.minimum) errors.push(`${at}: below minimum ${schema.minimum}`);
    if (schema.maximum !== undefined && value > schema.maximum) errors.push(`${at}: above maximum ${schema.maximum}`);
    if (schema.exclusiveMinimum !== undefined && value <= schema.exclusiveMinimum) errors.push(`${at}: must be > ${schema.exclusiveMinimum}`);
    if (schema.exclusiveMaximum !== undefined && value >= schema.exclusiveMaximum) errors.push(`${at}: must be < ${schema.exclusiveMaximum}`);
  }
  if (typeof value === "string") {
    const length = [...value].length;
    if (schema.minLength !== undefined && length < schema.minLength) errors.push(`${at}: shorter than ${schema.minLength}`);
    if (schema.maxLength !== undefined && length > schema.maxLength) errors.push(`${at}: longer than ${schema.maxLength}`);
    if (schema.pattern && !new RegExp(schema.pattern, "u").test(value)) errors.push(`${at}: does not match ${schema.pattern}`);
  }
  if (Array.isArray(value)) {
    if (schema.minItems !== undefined && value.length < schema.minItems) errors.push(`${at}: fewer than ${schema.minItems} items`);
    if (schema.maxItems !== undefined && value.length > schema.maxItems) errors.push(`${at}: more than ${schema.maxItems} items`);
    const prefix = schema.prefixItems || [];
    value.forEach((item, i) => {
      const sub = i < prefix.length ? prefix[i] : schema.items;
      if (sub !== undefined) check(item, sub, root, `${path}[${i}]`, errors);
    });
  }
  if (TYPES.object(value)) {
    const props = schema.properties || {};
    for (const key of schema.required || []) if (!(key in value)) errors.push(`${at}: missing required "${key}"`);
    for (const [key, item] of Object.entries(value)) {
      const where = path ? `${path}.${key}` : key;
      if (key in props) check(item, props[key], root, where, errors);
      else if (schema.additionalProperties === false) errors.push(`${at}: unexpected property "${key}"`);
      else if (typeof schema.additionalProperties === "object") check(item, schema.additionalProperties, root, where, errors);
    }
  }
  const passes = (sub) => { const e = []; check(value, sub, root, path, e); return e.length === 0; };
  if (schema.allOf) schema.allOf.forEach((sub) => check(value, sub, root, path, errors));
  if (schema.anyOf && !schema.anyOf.some(passes)) errors.push(`${at}: matches none of anyOf`);
  if (schema.oneOf && schema.oneOf.filter(passes).length !== 1) errors.push(`${at}: must match exactly one of oneOf`);
}

export function validate(value, schema) {
  const errors = [];
  check(value, schema, schema, "", errors);
  return errors;
}
