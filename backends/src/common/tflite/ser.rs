//! `TfModel` → TFLite flatbuffer (schema version 3, the `tflite.fbs` that ships in `tract-tflite`).
//! Buffer 0 is the empty sentinel the format requires; every constant gets its own buffer; operator codes
//! are deduplicated in first-use order, so the bytes are a pure function of the model.
use flatbuffers::{FlatBufferBuilder, UnionWIPOffset, WIPOffset};
use tract_tflite::tflite as fb;

use super::model::{Options, TfModel};

fn options<'a>(
    b: &mut FlatBufferBuilder<'a>,
    o: &Options,
) -> (fb::BuiltinOptions, Option<WIPOffset<UnionWIPOffset>>) {
    use fb::BuiltinOptions as K;
    match o {
        Options::None => (K::NONE, None),
        Options::Conv { padding, stride, dilation, act } => {
            let args = fb::Conv2DOptionsArgs {
                padding: *padding,
                stride_w: stride.1,
                stride_h: stride.0,
                fused_activation_function: *act,
                dilation_w_factor: dilation.1,
                dilation_h_factor: dilation.0,
            };
            (K::Conv2DOptions, Some(fb::Conv2DOptions::create(b, &args).as_union_value()))
        }
        Options::Depthwise { padding, stride, dilation, multiplier, act } => {
            let args = fb::DepthwiseConv2DOptionsArgs {
                padding: *padding,
                stride_w: stride.1,
                stride_h: stride.0,
                depth_multiplier: *multiplier,
                fused_activation_function: *act,
                dilation_w_factor: dilation.1,
                dilation_h_factor: dilation.0,
            };
            (
                K::DepthwiseConv2DOptions,
                Some(fb::DepthwiseConv2DOptions::create(b, &args).as_union_value()),
            )
        }
        Options::Pool { padding, stride, filter, act } => {
            let args = fb::Pool2DOptionsArgs {
                padding: *padding,
                stride_w: stride.1,
                stride_h: stride.0,
                filter_width: filter.1,
                filter_height: filter.0,
                fused_activation_function: *act,
            };
            (K::Pool2DOptions, Some(fb::Pool2DOptions::create(b, &args).as_union_value()))
        }
        Options::FullyConnected { act, keep_num_dims } => {
            let args = fb::FullyConnectedOptionsArgs {
                fused_activation_function: *act,
                keep_num_dims: *keep_num_dims,
                ..Default::default()
            };
            (
                K::FullyConnectedOptions,
                Some(fb::FullyConnectedOptions::create(b, &args).as_union_value()),
            )
        }
        // Add/Sub/Mul/Div share a shape but not a table: `binary_options` picks it by opcode.
        Options::Binary { .. } => (K::NONE, None),
        Options::Concat { axis, act } => {
            let args =
                fb::ConcatenationOptionsArgs { axis: *axis, fused_activation_function: *act };
            (
                K::ConcatenationOptions,
                Some(fb::ConcatenationOptions::create(b, &args).as_union_value()),
            )
        }
        Options::Reshape { shape } => {
            let v = b.create_vector(shape);
            (
                K::ReshapeOptions,
                Some(
                    fb::ReshapeOptions::create(b, &fb::ReshapeOptionsArgs { new_shape: Some(v) })
                        .as_union_value(),
                ),
            )
        }
        Options::Softmax { beta } => (
            K::SoftmaxOptions,
            Some(
                fb::SoftmaxOptions::create(b, &fb::SoftmaxOptionsArgs { beta: *beta })
                    .as_union_value(),
            ),
        ),
        Options::Reducer { keep_dims } => (
            K::ReducerOptions,
            Some(
                fb::ReducerOptions::create(b, &fb::ReducerOptionsArgs { keep_dims: *keep_dims })
                    .as_union_value(),
            ),
        ),
        Options::LeakyRelu { alpha } => (
            K::LeakyReluOptions,
            Some(
                fb::LeakyReluOptions::create(b, &fb::LeakyReluOptionsArgs { alpha: *alpha })
                    .as_union_value(),
            ),
        ),
        Options::Gelu { approximate } => (
            K::GeluOptions,
            Some(
                fb::GeluOptions::create(b, &fb::GeluOptionsArgs { approximate: *approximate })
                    .as_union_value(),
            ),
        ),
        Options::BatchMatMul { adj_x, adj_y } => {
            let args =
                fb::BatchMatMulOptionsArgs { adj_x: *adj_x, adj_y: *adj_y, ..Default::default() };
            (K::BatchMatMulOptions, Some(fb::BatchMatMulOptions::create(b, &args).as_union_value()))
        }
        Options::Gather { axis } => (
            K::GatherOptions,
            Some(
                fb::GatherOptions::create(b, &fb::GatherOptionsArgs { axis: *axis, batch_dims: 0 })
                    .as_union_value(),
            ),
        ),
        Options::Split { num_splits } => (
            K::SplitOptions,
            Some(
                fb::SplitOptions::create(b, &fb::SplitOptionsArgs { num_splits: *num_splits })
                    .as_union_value(),
            ),
        ),
        Options::SplitV { num_splits } => (
            K::SplitVOptions,
            Some(
                fb::SplitVOptions::create(b, &fb::SplitVOptionsArgs { num_splits: *num_splits })
                    .as_union_value(),
            ),
        ),
        Options::Lstm { cell_clip, time_major } => {
            let args = fb::UnidirectionalSequenceLSTMOptionsArgs {
                fused_activation_function: fb::ActivationFunctionType::TANH,
                cell_clip: *cell_clip,
                time_major: *time_major,
                ..Default::default()
            };
            (
                K::UnidirectionalSequenceLSTMOptions,
                Some(fb::UnidirectionalSequenceLSTMOptions::create(b, &args).as_union_value()),
            )
        }
        Options::StridedSlice => (
            K::StridedSliceOptions,
            Some(
                fb::StridedSliceOptions::create(b, &fb::StridedSliceOptionsArgs::default())
                    .as_union_value(),
            ),
        ),
        Options::StridedSliceMasked { end_mask } => {
            let args = fb::StridedSliceOptionsArgs { end_mask: *end_mask, ..Default::default() };
            (
                K::StridedSliceOptions,
                Some(fb::StridedSliceOptions::create(b, &args).as_union_value()),
            )
        }
        Options::Resize { nearest: false, align_corners, half_pixel } => {
            let args = fb::ResizeBilinearOptionsArgs {
                align_corners: *align_corners,
                half_pixel_centers: *half_pixel,
            };
            (
                K::ResizeBilinearOptions,
                Some(fb::ResizeBilinearOptions::create(b, &args).as_union_value()),
            )
        }
        Options::Resize { nearest: true, align_corners, half_pixel } => {
            let args = fb::ResizeNearestNeighborOptionsArgs {
                align_corners: *align_corners,
                half_pixel_centers: *half_pixel,
            };
            (
                K::ResizeNearestNeighborOptions,
                Some(fb::ResizeNearestNeighborOptions::create(b, &args).as_union_value()),
            )
        }
        Options::MirrorPad { reflect } => {
            let mode =
                if *reflect { fb::MirrorPadMode::REFLECT } else { fb::MirrorPadMode::SYMMETRIC };
            let args = fb::MirrorPadOptionsArgs { mode };
            (K::MirrorPadOptions, Some(fb::MirrorPadOptions::create(b, &args).as_union_value()))
        }
        Options::TransposeConv { padding, stride, act } => {
            let args = fb::TransposeConvOptionsArgs {
                padding: *padding,
                stride_h: stride.0,
                stride_w: stride.1,
                fused_activation_function: *act,
            };
            (
                K::TransposeConvOptions,
                Some(fb::TransposeConvOptions::create(b, &args).as_union_value()),
            )
        }
        Options::ArgMax { output } => {
            let args = fb::ArgMaxOptionsArgs { output_type: *output };
            (K::ArgMaxOptions, Some(fb::ArgMaxOptions::create(b, &args).as_union_value()))
        }
        Options::Pack { count, axis } => {
            let args = fb::PackOptionsArgs { values_count: *count, axis: *axis };
            (K::PackOptions, Some(fb::PackOptions::create(b, &args).as_union_value()))
        }
        Options::Unpack { num, axis } => {
            let args = fb::UnpackOptionsArgs { num: *num, axis: *axis };
            (K::UnpackOptions, Some(fb::UnpackOptions::create(b, &args).as_union_value()))
        }
        Options::Cast { from, to } => {
            let args = fb::CastOptionsArgs { in_data_type: *from, out_data_type: *to };
            (K::CastOptions, Some(fb::CastOptions::create(b, &args).as_union_value()))
        }
    }
}

/// The lowest op version the runtime registers the builtin under (BROADCAST_TO starts at 2).
fn min_version(c: fb::BuiltinOperator) -> i32 {
    if c == fb::BuiltinOperator::BROADCAST_TO {
        2
    } else {
        1
    }
}

fn binary_options<'a>(
    b: &mut FlatBufferBuilder<'a>,
    code: fb::BuiltinOperator,
    act: fb::ActivationFunctionType,
) -> (fb::BuiltinOptions, Option<WIPOffset<UnionWIPOffset>>) {
    use fb::BuiltinOperator as C;
    use fb::BuiltinOptions as K;
    match code {
        C::ADD => (
            K::AddOptions,
            Some(
                fb::AddOptions::create(
                    b,
                    &fb::AddOptionsArgs { fused_activation_function: act, pot_scale_int16: false },
                )
                .as_union_value(),
            ),
        ),
        C::SUB => (
            K::SubOptions,
            Some(
                fb::SubOptions::create(
                    b,
                    &fb::SubOptionsArgs { fused_activation_function: act, pot_scale_int16: false },
                )
                .as_union_value(),
            ),
        ),
        C::MUL => (
            K::MulOptions,
            Some(
                fb::MulOptions::create(b, &fb::MulOptionsArgs { fused_activation_function: act })
                    .as_union_value(),
            ),
        ),
        C::DIV => (
            K::DivOptions,
            Some(
                fb::DivOptions::create(b, &fb::DivOptionsArgs { fused_activation_function: act })
                    .as_union_value(),
            ),
        ),
        _ => (K::NONE, None),
    }
}

/// The flatbuffer bytes of `m`.
pub fn write(m: &TfModel, description: &str) -> Vec<u8> {
    let mut b = FlatBufferBuilder::with_capacity(1 << 16);
    // Buffers: 0 is the empty sentinel.
    let mut buffers = vec![fb::Buffer::create(&mut b, &fb::BufferArgs { data: None })];
    let mut tensors = Vec::with_capacity(m.tensors.len());
    for t in &m.tensors {
        let buffer = match &t.data {
            Some(bytes) => {
                let data = b.create_vector(bytes);
                buffers.push(fb::Buffer::create(&mut b, &fb::BufferArgs { data: Some(data) }));
                (buffers.len() - 1) as u32
            }
            None => 0,
        };
        let shape = b.create_vector(&t.shape);
        let name = b.create_string(&t.name);
        let quant = t.quant.as_ref().map(|q| {
            let scale = b.create_vector(&q.scale);
            let zp = b.create_vector(&q.zero_point);
            fb::QuantizationParameters::create(
                &mut b,
                &fb::QuantizationParametersArgs {
                    scale: Some(scale),
                    zero_point: Some(zp),
                    quantized_dimension: q.axis,
                    ..Default::default()
                },
            )
        });
        tensors.push(fb::Tensor::create(
            &mut b,
            &fb::TensorArgs {
                shape: Some(shape),
                type_: t.dtype,
                buffer,
                name: Some(name),
                quantization: quant,
                is_variable: t.is_variable,
                ..Default::default()
            },
        ));
    }
    let mut codes: Vec<fb::BuiltinOperator> = Vec::new();
    let mut ops = Vec::with_capacity(m.operators.len());
    for o in &m.operators {
        let idx = codes.iter().position(|c| *c == o.code).unwrap_or_else(|| {
            codes.push(o.code);
            codes.len() - 1
        });
        let (kind, opts) = match &o.options {
            Options::Binary { act } => binary_options(&mut b, o.code, *act),
            other => options(&mut b, other),
        };
        let inputs = b.create_vector(&o.inputs);
        let outputs = b.create_vector(&o.outputs);
        ops.push(fb::Operator::create(
            &mut b,
            &fb::OperatorArgs {
                opcode_index: idx as u32,
                inputs: Some(inputs),
                outputs: Some(outputs),
                builtin_options_type: kind,
                builtin_options: opts,
                ..Default::default()
            },
        ));
    }
    let codes: Vec<_> = codes
        .iter()
        .map(|c| {
            fb::OperatorCode::create(
                &mut b,
                &fb::OperatorCodeArgs {
                    deprecated_builtin_code: c.0.min(127) as i8,
                    custom_code: None,
                    version: min_version(*c),
                    builtin_code: *c,
                },
            )
        })
        .collect();
    let tensors = b.create_vector(&tensors);
    let inputs = b.create_vector(&m.inputs);
    let outputs = b.create_vector(&m.outputs);
    let ops = b.create_vector(&ops);
    let sg_name = b.create_string("main");
    let subgraph = fb::SubGraph::create(
        &mut b,
        &fb::SubGraphArgs {
            tensors: Some(tensors),
            inputs: Some(inputs),
            outputs: Some(outputs),
            operators: Some(ops),
            name: Some(sg_name),
        },
    );
    let subgraphs = b.create_vector(&[subgraph]);
    let codes = b.create_vector(&codes);
    let buffers = b.create_vector(&buffers);
    let desc = b.create_string(description);
    let model = fb::Model::create(
        &mut b,
        &fb::ModelArgs {
            version: 3,
            operator_codes: Some(codes),
            subgraphs: Some(subgraphs),
            description: Some(desc),
            buffers: Some(buffers),
            ..Default::default()
        },
    );
    fb::finish_model_buffer(&mut b, model);
    b.finished_data().to_vec()
}
